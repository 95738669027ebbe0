"""cygrad's pool seen by threadpoolctl (its custom controller API).

Imported by ``cygrad`` when threadpoolctl is installed: ``threadpool_info()`` then
lists cygrad (user_api and internal_api "cygrad", its thread count and version), and
``threadpool_limits(n)`` (or ``threadpool_limits(n, user_api="cygrad")``) sets the
process-wide count of :func:`cygrad.set_num_threads` and restores it on exit; a
:func:`cygrad.threads` block in progress keeps its own, as with set_num_threads."""

from cygrad import _config


def register():
    """Register cygrad's controller with threadpoolctl; False when it is not installed
    (or too old to take custom controllers)."""
    try:
        import threadpoolctl
    except ImportError:
        return False
    if not hasattr(threadpoolctl, "register") or not hasattr(threadpoolctl, "LibController"):
        return False
    if any(getattr(c, "internal_api", None) == "cygrad"
           for c in getattr(threadpoolctl, "_ALL_CONTROLLERS", ())):
        return True

    class CygradController(threadpoolctl.LibController):
        user_api = "cygrad"
        internal_api = "cygrad"
        filename_prefixes = ("_cygrad_threads",)

        def get_num_threads(self):
            return _config.process_threads()

        def set_num_threads(self, num_threads):
            n = int(num_threads)
            _config.set_num_threads(max(1, min(n, _config.MAX_THREADS)))

        def get_version(self):
            from cygrad import __version__
            return __version__

    threadpoolctl.register(CygradController)
    return True
