# The one place that touches omp.h, behind #ifdef _OPENMP so that a serial
# build (no OpenMP in the compiler) still compiles.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int bp_openmp_enabled(void) { return 1; }
    static int bp_omp_max_threads(void) { return omp_get_max_threads(); }
    static int bp_omp_version(void) { return _OPENMP; }
    #else
    static int bp_openmp_enabled(void) { return 0; }
    static int bp_omp_max_threads(void) { return 1; }
    static int bp_omp_version(void) { return 0; }
    #endif
    """
    int bp_openmp_enabled() noexcept nogil
    int bp_omp_max_threads() noexcept nogil
    int bp_omp_version() noexcept nogil
