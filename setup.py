"""Build the compiled kernels of cygrad.

Only the extension list and the build policy live here; metadata is in pyproject.toml.

Environment variables read at build time:

CYGRAD_REQUIRE_OPENMP=1  fail the build when the compiler has no OpenMP (CI sets it).
CYGRAD_DEBUG=1           Cython boundscheck/wraparound/initializedcheck on, -O1 -g.
CYGRAD_NATIVE=1          add -march=native (local benchmarking only; never for a wheel).
"""

import os
import shutil
import sys
import tempfile
import textwrap

import numpy as np
from Cython import __version__ as cython_version
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


DEBUG = _flag("CYGRAD_DEBUG")
NATIVE = _flag("CYGRAD_NATIVE")
REQUIRE_OPENMP = _flag("CYGRAD_REQUIRE_OPENMP")

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n + omp_get_max_threads() - omp_get_max_threads());
        return n > 0 ? 0 : 1;
    }
    """
)


class BuildExt(build_ext):
    """Probe OpenMP with the real compiler, then set flags on every extension."""

    def _try_openmp(self, compile_args, link_args):
        tmp = tempfile.mkdtemp(prefix="cygrad-omp-")
        try:
            src = os.path.join(tmp, "omp_probe.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST)
            objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
            self.compiler.link_executable(
                objs, "omp_probe", output_dir=tmp, extra_postargs=link_args
            )
            return True
        except Exception:
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _openmp_flags(self):
        candidates = [(["-fopenmp"], ["-fopenmp"])]
        if sys.platform == "darwin":
            candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
        for cflags, lflags in candidates:
            if self._try_openmp(cflags, lflags):
                return cflags, lflags
        return None

    def build_extensions(self):
        omp = self._openmp_flags()
        if omp is None:
            msg = (
                "\n" + "*" * 72 + "\n"
                "cygrad: the C compiler does not support OpenMP.\n"
                "The kernels will be built SERIAL: every thread setting is ignored.\n"
                "Install an OpenMP-capable compiler (gcc, or clang with libomp).\n"
                + "*" * 72
            )
            if REQUIRE_OPENMP:
                raise RuntimeError(msg + "\nCYGRAD_REQUIRE_OPENMP is set: refusing to build.")
            print(msg, file=sys.stderr)
            cflags, lflags = [], []
        else:
            cflags, lflags = omp

        opt = ["-O1", "-g"] if DEBUG else ["-O3"]
        common = opt + ["-fno-math-errno", "-fno-trapping-math", "-fvisibility=hidden",
                        "-std=c11"]
        # Neither flag changes a computed value (no reassociation, no flush to zero,
        # NaN and Inf kept, unlike -ffast-math): -fno-math-errno drops errno writes,
        # -fno-trapping-math lets gcc evaluate both arms of a select, which is what
        # allows the branch-free activation loops to vectorise.
        if NATIVE:
            common.append("-march=native")
        flags = common + cflags
        build_flags = " ".join(flags)
        for ext in self.extensions:
            ext.extra_compile_args = flags + ["-Wno-unused-function"]
            ext.extra_link_args = lflags
            ext.define_macros = list(ext.define_macros) + [
                ("BP_BUILD_FLAGS", '"%s"' % build_flags),
                ("BP_CYTHON_VERSION", '"%s"' % cython_version),
                ("BP_DEBUG", "1" if DEBUG else "0"),
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ]
        super().build_extensions()


def ext(name, *csrc):
    return Extension(
        "cygrad." + name,
        sources=["src/cygrad/%s.pyx" % name] + ["csrc/%s.c" % c for c in csrc],
        include_dirs=["csrc", np.get_include()],
    )


extensions = [
    ext("_common", "bp_cpu"),
    ext("_gemm", "bp_gemm", "bp_gemm_packed"),
    ext("_elementwise", "bp_elementwise"),
    ext("_losses", "bp_elementwise"),
    ext("_embedding", "bp_elementwise"),
    ext("_decode"),
    ext("_window", "bp_elementwise"),
]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives, force=True),
    cmdclass={"build_ext": BuildExt},
)
