"""Mini-batches without a framework: ``cygrad.data.batches``."""

import numpy as np

__all__ = ["batches"]


def batches(arrays, batch_size, shuffle=True, seed=None, drop_last=False, progress=False):
    """Yield mini-batches of rows of one or several arrays, in step.

    Parameters
    ----------
    arrays : ndarray, or tuple/list of ndarrays with the same first dimension
    batch_size : int >= 1
    shuffle : bool
        A new permutation of the rows per call (an epoch), drawn from ``seed``.
    seed : None, int or numpy.random.Generator
        For a reproducible order pass an int (the same order every call) or a
        Generator (a new order each call, reproducible as a sequence). None:
        ``cygrad.manual_seed``'s generator when it was called, else fresh entropy.
    drop_last : bool
        Leave out the last, smaller batch.
    progress : bool or str
        Show a tqdm progress bar over the batches (a str: its description); silent
        where tqdm cannot be imported.

    Yields
    ------
    ndarray or tuple of ndarray
        Copies of the selected rows (C-contiguous), as ``arrays`` was given:
        one array, or a tuple.
    """
    single = isinstance(arrays, np.ndarray)
    arrs = [arrays] if single else list(arrays)
    if not arrs:
        raise ValueError("batches: arrays is empty")
    for i, a in enumerate(arrs):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"batches: arrays[{i}] must be a numpy array, got {type(a).__name__}")
        if a.ndim < 1:
            raise ValueError(f"batches: arrays[{i}] is 0-D; batches are rows of arrays")
    n = len(arrs[0])
    for i, a in enumerate(arrs):
        if len(a) != n:
            raise ValueError(f"batches: arrays[{i}] has {len(a)} rows, arrays[0] has {n}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    if shuffle:
        if seed is None:
            from cygrad._random import default_generator
            seed = default_generator()      # cygrad.manual_seed's, or None: fresh entropy
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        order = rng.permutation(n)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    starts = range(0, stop, batch_size)
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            starts = tqdm(starts, total=len(starts), unit="batch", leave=False,
                          desc=progress if isinstance(progress, str) else None)
    for lo in starts:
        hi = min(lo + batch_size, n)
        if order is None:
            out = [np.ascontiguousarray(a[lo:hi]) for a in arrs]
        else:
            idx = order[lo:hi]
            out = [np.ascontiguousarray(a[idx]) for a in arrs]
        yield out[0] if single else tuple(out)
