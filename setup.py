"""Build the compiled kernels of cygrad.

Only the extension list and the build policy live here; metadata is in pyproject.toml.

Environment variables read at build time:

CYGRAD_REQUIRE_THREADS=1 fail the build when the compiler cannot build the thread pool
                         (pthreads, C11 atomics) instead of building serial kernels (CI
                         sets it; CYGRAD_REQUIRE_OPENMP=1 is the old name).
CYGRAD_SERIAL=1          build serial kernels (no thread pool), e.g. to test that build.
CYGRAD_OPENMP=1          run the kernels' loops on OpenMP teams (-fopenmp, libgomp) instead
                         of cygrad's pool: for programs that already run an OpenMP runtime.
                         The pool stays the default (it measures better on a busy machine:
                         benches/report_contention.py --baseline).
CYGRAD_DEBUG=1           Cython boundscheck/wraparound/initializedcheck on, -O1 -g.
CYGRAD_NATIVE=1          add -march=native (local benchmarking only; never for a wheel).
CYGRAD_SANITIZE=1        AddressSanitizer + UndefinedBehaviorSanitizer (-O1 -g, every UB
                         report fatal) in compile and link, the threads probe included.
                         The interpreter is not instrumented: run it with
                         LD_PRELOAD="$(gcc -print-file-name=libasan.so)" and
                         ASAN_OPTIONS=detect_leaks=0 (see .ci/run).
"""

import glob
import json
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
SANITIZE = _flag("CYGRAD_SANITIZE")
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer"]
SERIAL = _flag("CYGRAD_SERIAL")
OPENMP = _flag("CYGRAD_OPENMP")
REQUIRE_THREADS = _flag("CYGRAD_REQUIRE_THREADS") or _flag("CYGRAD_REQUIRE_OPENMP")

# The thread pool (csrc/bp_pool.c) needs POSIX threads and C11 atomics.
THREADS_TEST = textwrap.dedent(
    """
    #include <pthread.h>
    #include <stdatomic.h>
    static atomic_int n;
    static void *run(void *arg) { (void)arg; atomic_fetch_add(&n, 1); return 0; }
    int main(void) {
        pthread_t t;
        if (pthread_create(&t, 0, run, 0)) return 1;
        pthread_join(t, 0);
        return atomic_load(&n) == 1 ? 0 : 1;
    }
    """
)


def _stamp_changed(path, settings):
    """Whether the build settings differ from those recorded at ``path`` by the
    previous build in this tree (then record them): a changed setting must rebuild
    everything, an unchanged one lets an up-to-date file be skipped."""
    text = json.dumps(settings, sort_keys=True)
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return True


class BuildExt(build_ext):
    """Probe threads with the real compiler, then set flags on every extension.

    Incremental: an extension whose sources, headers and flags did not change since
    the last build in this tree is not compiled again (a second `pip install` with
    another extra takes seconds); a change of flags (CYGRAD_DEBUG, CYGRAD_SANITIZE,
    CYGRAD_SERIAL, ...) rebuilds all. Extensions compile in parallel.
    """

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def _probe(self, source, compile_args, link_args):
        tmp = tempfile.mkdtemp(prefix="cygrad-probe-")
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(source)
            objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
            # LDFLAGS reach the extensions' link through distutils; the probe gets them
            # too, so that a sanitizer build probes what it will link
            ldflags = os.environ.get("LDFLAGS", "").split()
            self.compiler.link_executable(
                objs, "probe", output_dir=tmp, extra_postargs=link_args + ldflags
            )
            return True
        except Exception:
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def build_extensions(self):
        san = SANITIZE_FLAGS if SANITIZE else []
        threads = not SERIAL and self._probe(THREADS_TEST, ["-std=c11", "-pthread"] + san,
                                             ["-pthread"] + san)
        macros = []
        if threads:
            cflags, lflags = ["-pthread"], ["-pthread"]
            if OPENMP:
                omp = ["-fopenmp"]
                if not self._probe("#include <omp.h>\nint main(void) { return "
                                   "omp_get_max_threads() < 1; }\n", omp + san, omp + san):
                    raise RuntimeError("cygrad: CYGRAD_OPENMP=1, but the C compiler cannot "
                                       "build with -fopenmp")
                cflags, lflags = cflags + omp, lflags + omp
                macros.append(("BP_OPENMP", "1"))
        else:
            msg = (
                "\n" + "*" * 72 + "\n"
                "cygrad: building SERIAL kernels: every thread setting is ignored.\n"
                + ("(CYGRAD_SERIAL is set)\n" if SERIAL else
                   "The C compiler could not build a program with POSIX threads and C11\n"
                   "atomics (gcc >= 4.9 or clang >= 3.6 with pthreads can).\n")
                + "*" * 72
            )
            if REQUIRE_THREADS and not SERIAL:
                raise RuntimeError(msg + "\nCYGRAD_REQUIRE_THREADS is set: refusing to build.")
            print(msg, file=sys.stderr)
            cflags, lflags = [], []
            macros.append(("BP_NO_THREADS", "1"))

        # a release build carries no debug information (Python's own CFLAGS say -g):
        # -g0 after them, and the linker drops what is left (-S: debug sections only)
        opt = ["-O1", "-g"] if DEBUG or SANITIZE else ["-O3", "-g0"]
        if not (DEBUG or SANITIZE):
            lflags = lflags + ["-Wl,-S"]
        if SANITIZE:
            cflags, lflags = cflags + san, lflags + san
        common = opt + ["-fno-math-errno", "-fno-trapping-math", "-fvisibility=hidden",
                        "-std=c11"]
        # a compiler without -fopenmp-simd (some Apple clang releases) ignores the
        # `omp simd` pragmas instead: the loops stay correct, only less vectorised
        if self._probe("int main(void) { return 0; }\n", ["-fopenmp-simd", "-Werror"], []):
            common.append("-fopenmp-simd")
        # Neither math flag changes a computed value (no reassociation, no flush to
        # zero, NaN and Inf kept, unlike -ffast-math): -fno-math-errno drops errno
        # writes, -fno-trapping-math lets gcc evaluate both arms of a select, which is
        # what allows the branch-free activation loops to vectorise. -fopenmp-simd
        # honours the `omp simd` loop pragmas without the OpenMP runtime: the threads
        # are cygrad's own pool.
        if NATIVE:
            common.append("-march=native")
        flags = common + cflags
        build_flags = " ".join(flags)
        for ext in self.extensions:
            ext.extra_compile_args = flags + ["-Wno-unused-function"]
            ext.extra_link_args = lflags
            ext.define_macros = list(ext.define_macros) + macros + [
                ("BP_BUILD_FLAGS", '"%s"' % build_flags),
                ("BP_CYTHON_VERSION", '"%s"' % cython_version),
                ("BP_DEBUG", "1" if DEBUG else "0"),
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            ]
        settings = {"flags": flags, "link": lflags, "macros": macros, "ldflags":
                    os.environ.get("LDFLAGS", ""), "cflags": os.environ.get("CFLAGS", ""),
                    "cc": os.environ.get("CC", ""), "cython": cython_version}
        if _stamp_changed(os.path.join(self.build_temp, "cygrad-flags.json"), settings):
            self.force = True
        here = os.path.abspath(".")
        for ext in self.extensions:
            # cythonize lists the .pxd files of Cython and numpy among the depends; in
            # pip's fresh build environment they are always new: only ours count (a
            # new Cython or numpy changes the generated C, which is compared above)
            ext.depends = [d for d in ext.depends
                           if os.path.abspath(d).startswith(here + os.sep)]
        self._csrc_objects()
        super().build_extensions()

    def _csrc_objects(self):
        """Compile each C helper of csrc/ once, into an object of its own, before the
        extensions, and link the extensions with those objects. Several extensions
        share a helper (bp_elementwise.c: six of them): compiled as each extension's
        source, in parallel, they would write one object file at the same time, and an
        extension linked while another rewrote it lacks its symbols."""
        from concurrent.futures import ThreadPoolExecutor
        out_dir = os.path.join(self.build_temp, "csrc-objects")
        first = self.extensions[0]
        headers = sorted(glob.glob("csrc/*.h"))
        shared = sorted({s for e in self.extensions for s in e.sources
                         if s.startswith("csrc" + os.sep) or s.startswith("csrc/")})
        objects = {s: self.compiler.object_filenames([s], output_dir=out_dir)[0] for s in shared}

        def stale(src):
            obj = objects[src]
            if self.force or not os.path.exists(obj):
                return True
            t = os.path.getmtime(obj)
            return any(os.path.getmtime(d) > t for d in [src] + headers)

        def build(src):
            self.compiler.compile([src], output_dir=out_dir, macros=first.define_macros,
                                  include_dirs=first.include_dirs,
                                  extra_postargs=first.extra_compile_args)

        todo = [s for s in shared if stale(s)]
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, int(self.parallel or 1))) as pool:
                list(pool.map(build, todo))     # distinct files: no two write one object
        for ext in self.extensions:
            own = [s for s in ext.sources if s in objects]
            ext.sources = [s for s in ext.sources if s not in objects]
            ext.extra_objects = [objects[s] for s in own] + list(ext.extra_objects or [])
            ext.depends = list(ext.depends) + [objects[s] for s in own]


def ext(name, *csrc):
    return Extension(
        "cygrad." + name,
        sources=["src/cygrad/%s.pyx" % name.replace(".", "/")] + ["csrc/%s.c" % c for c in csrc],
        include_dirs=["csrc", np.get_include()],
        depends=sorted(glob.glob("csrc/*.h")),
    )


extensions = [
    ext("kernels._parallel", "bp_pool"),
    ext("kernels._common", "bp_cpu"),
    ext("kernels._gemm", "bp_gemm", "bp_gemm_kernels"),
    ext("kernels._elementwise", "bp_elementwise"),
    ext("kernels._losses", "bp_losses"),
    ext("kernels._embedding", "bp_elementwise"),
    ext("kernels._optim", "bp_elementwise", "bp_optim"),
    ext("kernels._crf"),
    ext("kernels._bags"),
    ext("kernels._cygrad_threads"),
    ext("graph._guard"),
    ext("ner._scores", "bp_elementwise"),
    ext("compiler._plan", "bp_elementwise", "bp_losses", "bp_optim"),
]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

# Cython regenerates a module's C when its .pyx or a cimported .pxd is newer than
# the C, or when the directives (CYGRAD_DEBUG) or Cython differ from the last
# build in this tree
_regenerate = _stamp_changed(os.path.join("build", "cygrad-cython.json"),
                             {"directives": directives, "cython": cython_version})


def _generated_c():
    """Hash (of the code, without Cython's metadata comment, which names the build
    environment's paths) and times of the C files generated in an earlier build."""
    import hashlib
    import re
    out = {}
    for path in glob.glob("src/cygrad/*.c") + glob.glob("src/cygrad/*/*.c"):
        with open(path, "rb") as f:
            code = re.sub(rb"/\* BEGIN: Cython Metadata.*?END: Cython Metadata \*/", b"",
                          f.read(), count=1, flags=re.S)
        out[path] = (hashlib.sha256(code).digest(), os.stat(path))
    return out


_before = _generated_c()
_modules = cythonize(extensions, compiler_directives=directives, force=_regenerate,
                     nthreads=os.cpu_count() or 1)
# pip's isolated build environment is new at every install, so Cython's and numpy's
# .pxd files look newer than our C and Cython writes every file again: where the new
# code equals the old, give the file back its old times, so the compiler skips it
_after = _generated_c()
for path, (digest, st) in _before.items():
    if path in _after and _after[path][0] == digest:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

setup(
    ext_modules=_modules,
    cmdclass={"build_ext": BuildExt},
)
