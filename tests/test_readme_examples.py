"""The code examples of README marked ``<!-- readme-example: NAME -->`` run as
written (in a temporary directory), so the guide cannot drift from the code."""

import os
import re
import subprocess
import sys

import pytest

from helpers import subprocess_env

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


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
