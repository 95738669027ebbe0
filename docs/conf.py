"""Sphinx configuration of cygrad's documentation.

Build it (warnings are errors, as in CI) with::

    pip install ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The code blocks of the pages run as tests (tests/project/test_docs.py), and every
public name of the package must have an entry in ``api.rst`` (the same test).
"""

import cygrad

project = "cygrad"
author = "the cygrad developers"
copyright = "2026, the cygrad developers"
version = release = cygrad.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.intersphinx"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
intersphinx_mapping = {}          # offline builds: no inventories are fetched
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "backpropagation kernels for multicore CPUs"}
html_static_path = []
