"""The window model's training step for cygrad and its peers, under pytest-benchmark.

Groups "peer step B=<B>", one benchmark per implementation (see peers.py). For
the interleaved side-by-side report with a chart, run benches/report_peers.py;
this module is for pytest-benchmark users (compare runs, save histories).

Run: python -m pytest benches/bench_peers.py --benchmark-only
"""

import pytest

import peers

IMPLS = peers.available()


@pytest.mark.parametrize("B", [1, 32, 512])
def test_peers_agree(B):
    """Every implementation reaches NumPy's parameters after 3 steps from one start."""
    errors = peers.check_same(IMPLS, B)
    assert set(errors) == set(IMPLS)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("B", [1, 8, 32, 128, 512, 2048])
def test_peer_step(benchmark, impl, B, nthreads):
    benchmark.group = f"peer step B={B}"
    benchmark.extra_info.update(impl=impl, threads=nthreads, windows=B)
    if impl.startswith("torch"):
        import torch
        torch.set_num_threads(nthreads)
    step = IMPLS[impl](peers.make_params(), None)
    batches = peers.make_batches(B)
    state = [0]
    sync = getattr(step, "sync", lambda: None)

    def run():
        w, lab = batches[state[0] % len(batches)]
        state[0] += 1
        step.step(w, lab)
        sync()
    benchmark(run)
