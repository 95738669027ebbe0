"""The documentation (docs/) cannot drift from the code: every page's Python code
blocks run, in order, as one program; every public name of the package has an
entry in docs/api.rst; and no docstring has prose that numpydoc rendering would
swallow into its Parameters or Returns section. (The Sphinx build itself, with
warnings as errors, is a step of .ci/run.)"""

import inspect
import os
import re
import subprocess
import sys
import types

import pytest

import cygrad
import cygrad.data
import cygrad.distributed
import cygrad.kernels
import cygrad.kernels.reference
import cygrad.ner
import cygrad.ner.model
import cygrad.nn
import cygrad.nn.init
import cygrad.optim
from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")
needs_docs = pytest.mark.skipif(not os.path.isdir(DOCS), reason="docs/ is not beside tests/")
PAGES = sorted(f for f in os.listdir(DOCS) if f.endswith(".rst")) if os.path.isdir(DOCS) else []
PUBLIC = [cygrad, cygrad.nn, cygrad.nn.init, cygrad.optim, cygrad.data, cygrad.kernels,
          cygrad.ner, cygrad.distributed]


def _blocks(page):
    text = open(os.path.join(DOCS, page), encoding="utf-8").read()
    blocks = re.findall(r"^\.\. code-block:: python\n\n((?:(?:    .*)?\n)+)", text, re.M)
    return ["\n".join(line[4:] for line in b.splitlines()) for b in blocks]


@needs_docs
def test_the_guide_pages_have_examples():
    for page in ("getting-started.rst", "tutorial.rst", "guide.rst", "kernels.rst"):
        assert _blocks(page), f"{page} has no Python code block"


@needs_docs
@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)])
def test_page_examples_run(tmp_path, page):
    code = "\n\n".join(_blocks(page))
    env = subprocess_env()
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, f"docs/{page}: its examples failed:\n{r.stderr[-3000:]}"


def _documented():
    text = open(os.path.join(DOCS, "api.rst"), encoding="utf-8").read()
    return set(re.findall(r"^\.\. (?:auto)?(?:function|class|exception|data|module)"
                          r":: ([\w.]+)", text, re.M))


@needs_docs
@pytest.mark.parametrize("mod", PUBLIC, ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_api_reference(mod):
    documented = _documented()
    missing = [f"{mod.__name__}.{n}" for n in mod.__all__
               if not n.startswith("__") and f"{mod.__name__}.{n}" not in documented]
    assert mod.__name__ in documented, f"docs/api.rst has no automodule for {mod.__name__}"
    assert not missing, f"docs/api.rst does not document {missing}"


def _objects():
    for mod in PUBLIC + [cygrad.kernels.reference, cygrad.ner.model]:
        yield mod.__name__, mod
        names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
        for n in names:
            o = getattr(mod, n)
            if isinstance(o, types.ModuleType):
                continue
            yield f"{mod.__name__}.{n}", o
            if inspect.isclass(o):
                for k, v in vars(o).items():
                    if k.startswith("_") and k != "__init__":
                        continue
                    v = v.fget if isinstance(v, property) else getattr(v, "__func__", v)
                    if callable(v):
                        yield f"{mod.__name__}.{n}.{k}", v


def test_no_docstring_prose_inside_a_parameters_section():
    """In numpydoc, a section runs to the next header: a paragraph of prose after a
    Parameters (or Returns, Raises) list, unindented after a blank line, is read as
    more entries. Such prose belongs under a Notes header."""
    bad = []
    for name, o in _objects():
        doc = inspect.getdoc(o) if not isinstance(o, types.ModuleType) else o.__doc__
        if not doc:
            continue
        lines = inspect.cleandoc(doc).splitlines()
        section = None
        for i, line in enumerate(lines):
            if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()) and line.strip():
                section = line.strip()
            elif (section in ("Parameters", "Returns", "Raises", "Yields") and line
                  and not line.startswith(" ") and i > 0 and not lines[i - 1].strip()
                  and not re.fullmatch(r"-{3,}", line.strip())
                  and not re.match(r"[\w*, ]+ :|[\w.]+$|\w[\w, ]*$", line)):
                bad.append(f"{name}: {line[:60]!r}")
                break
    assert not bad, "prose inside a numpydoc section (add a Notes header):\n" + "\n".join(bad)
