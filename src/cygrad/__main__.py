"""``python -m cygrad``: the same program as the ``cygrad`` command."""

import sys

from cygrad.ner.cli import main

sys.exit(main())
