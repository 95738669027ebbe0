# cython: language_level=3
"""A shared library with cygrad's name, for the ecosystem's thread controls.

threadpoolctl finds thread pools by the file names of the shared libraries a process
has loaded, then asks the controller registered for that name; the name of this
module's file (``_cygrad_threads...so``) is the one cygrad's controller
(:mod:`cygrad.kernels._threadpool`) registers, so that ``threadpool_info()`` lists cygrad's
pool and ``threadpool_limits`` sets its thread count. The pool itself is
cygrad.kernels._parallel (csrc/bp_pool.c)."""
