"""The code examples of README marked ``<!-- readme-example: NAME -->`` run as
written (in a temporary directory), so the guide cannot drift from the code."""

import os
import re
import subprocess
import sys

import pytest

from helpers import subprocess_env

pytestmark = pytest.mark.slow     # README's commands, run as written

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")


def _examples():
    if not os.path.isfile(README):
        return []
    text = open(README, encoding="utf-8").read()
    return re.findall(r"<!-- readme-example: ([\w-]+)[^>]*-->\s*```python\n(.*?)```", text,
                      re.S)


@pytest.mark.skipif(not os.path.isfile(README), reason="README.md is not beside tests/")
def test_readme_has_examples():
    assert [n for n, _ in _examples()], "no marked example in README.md"


@pytest.mark.parametrize("name,code", _examples(), ids=[n for n, _ in _examples()])
def test_readme_example_runs(tmp_path, name, code):
    env = subprocess_env()
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, f"README example {name} failed:\n{r.stderr[-3000:]}"
    if name == "getting-started":
        acc = float(re.search(r"train accuracy ([\d.]+)", r.stdout).group(1))
        assert acc >= 0.9, r.stdout


def _readme():
    return open(README, encoding="utf-8").read()


@pytest.mark.skipif(not os.path.isfile(README), reason="README.md is not beside tests/")
def test_readme_demo_is_true_for_the_model_its_command_trains(tmp_path):
    """README's main command, run as written: its held-out figures are those README
    states (training is deterministic for a seed; a rounding difference between
    SIMD paths may move F1 a little), and the tag example prints README's line."""
    text = _readme()
    m = re.search(r"reaches\s+held-out\s+F1\s+([\d.]+)\s+after\s+the\s+first\s+epoch\s+and\s+"
                  r"([\d.]+)\s+at\s+its\s+best\s+\(seen\s+names\s+([\d.]+),\s+unseen\s+([\d.]+)\)",
                  text)
    assert m, "README no longer states the demo's figures"
    first, best, seen, unseen = map(float, m.groups())
    env = subprocess_env()
    out = str(tmp_path / "model")
    r = subprocess.run([sys.executable, "-m", "cygrad", "train", "--out", out, "--no-progress"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    f1s = [float(x) for x in re.findall(r"^epoch +\d+ .*? F1 ([\d.]+)", r.stdout, re.M)]
    assert len(f1s) >= 2 and abs(f1s[0] - first) <= 1.0 and abs(max(f1s) - best) <= 1.0, \
        r.stdout
    assert max(f1s) < 99 and max(f1s) > f1s[0], r.stdout    # informative, and it learns
    rows = dict(re.findall(r"^(seen|unseen) .* ([\d.]+) +\d+$", r.stdout, re.M))
    assert abs(float(rows["seen"]) - seen) <= 1.5 and abs(float(rows["unseen"]) - unseen) <= 2, \
        r.stdout
    cmd = re.search(r'^echo "(.*?)" \| cygrad tag --model model --format inline\n# (.*)$', text,
                    re.M)
    r = subprocess.run([sys.executable, "-m", "cygrad", "tag", "--model", out, "--format",
                        "inline"], input=cmd.group(1) + "\n", capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.strip() == cmd.group(2).strip(), r.stdout
