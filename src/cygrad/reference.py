"""The NumPy reference of the kernels: moved to :mod:`cygrad.kernels.reference`
(this name is an alias of that module)."""

import sys

from cygrad.kernels import reference as _reference

sys.modules[__name__] = _reference
