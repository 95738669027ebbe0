"""Saving and loading state: ``cygrad.save(obj, path)`` / ``cygrad.load(path)``.

One safe format for module, optimiser and schedule state (and any nesting of
dicts, lists, numbers, strings and NumPy arrays): a NumPy ``.npz`` archive
holding the arrays as ``a0, a1, ...`` and one JSON header (member
``__cygrad__``) with the format name, its version, the structure (arrays
referred to by name, with their shape and dtype) and the SHA-256 of every
array's bytes. It is loaded with ``allow_pickle=False``: object arrays are
refused when saving, and a pickle inside a file is never unpickled. The file
is written atomically: a temporary file beside it, fsynced, then renamed into
place, so a reader sees the old file or the new one, never half of one.

Tuples come back as lists, NumPy scalars as Python numbers; dict keys must be
strings. A file that is not a cygrad archive, is truncated, or whose arrays do
not match the header's checksums is refused with :class:`FormatError`.

The helpers below (``atomic_write`` and friends) are also what the NER model
and its checkpoints use to write their files.
"""

import hashlib
import io
import json
import os
import stat
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "cygrad-state"
VERSION = 1
HEADER = "__cygrad__"
MAX_DEPTH = 64          # nesting of dicts and lists, saved or loaded

__all__ = ["save", "load", "FormatError"]


class FormatError(ValueError):
    """A file that cygrad.load cannot take: not a cygrad archive, another
    version, truncated, or corrupt (its message says which)."""


# ------------------------------------------------------------------ atomic files

_points = 0


def write_point():
    """A point where a kill leaves the files as they are on disk. For tests:
    CYGRAD_KILL_AT_WRITE=n makes the process exit (status 86) at the n-th point."""
    global _points
    n = os.environ.get("CYGRAD_KILL_AT_WRITE")
    if n:
        _points += 1
        if _points == int(n):
            os._exit(86)


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path):
    """Delete a file or a directory tree, then sync its parent."""
    import shutil
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    write_point()


def _umask():
    mask = os.umask(0o022)      # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Write via a temporary file in the same directory, fsync, then rename into
    place (and sync the directory); returns the SHA-256 of what was written. A file
    replaced keeps its permissions; a new one gets open()'s (0666 less the umask)."""
    path = os.fsdecode(os.fspath(path))
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    # the temporary name stays short (a legal 255-byte name plus a prefix would not be)
    fd, tmp = tempfile.mkstemp(prefix=".cg-" + os.path.basename(path)[:48] + ".",
                               suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)             # not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        write_point()
        os.replace(tmp, path)
        fsync_dir(directory)
        write_point()
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return digest


# ------------------------------------------------------------------ save / load

def _array_digest(a):
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _encode(obj, arrays, where, stack=()):
    """The JSON-able structure of obj; arrays go into ``arrays`` (copies: what is
    written and its checksum are one snapshot, whatever another thread does to the
    caller's arrays meanwhile)."""
    from cygrad.graph import Tensor
    if isinstance(obj, Tensor):
        obj = obj.data
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise TypeError(f"save: {where} is an array of dtype {obj.dtype}; only numeric and "
                            f"boolean arrays can be saved (no pickled objects)")
        name = f"a{len(arrays)}"
        snap = np.array(obj, copy=True, order="C")
        arrays[name] = snap
        return {"__array__": name, "shape": list(snap.shape), "dtype": snap.dtype.str,
                "sha256": _array_digest(snap)}
    if isinstance(obj, (list, tuple, dict)):
        if any(o is obj for o in stack):
            raise ValueError(f"save: {where} contains itself (a reference cycle)")
        if len(stack) >= MAX_DEPTH:
            raise ValueError(f"save: {where} is nested more than {MAX_DEPTH} levels deep")
        stack = stack + (obj,)
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays, f"{where}[{i}]", stack) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"save: {where} has a key {k!r} of type {type(k).__name__}; "
                                f"keys must be strings")
            if k.startswith("__") and k.endswith("__"):
                raise ValueError(f"save: {where} has the reserved key {k!r}")
            out[k] = _encode(v, arrays, f"{where}[{k!r}]", stack)
        return out
    raise TypeError(f"save: {where} is a {type(obj).__name__}; cygrad.save takes dicts, lists, "
                    f"numbers, strings, None and NumPy arrays (use state_dict() for modules "
                    f"and optimisers)")


def save(obj, path):
    """Write ``obj`` (e.g. ``{"model": model.state_dict(), "optim": opt.state_dict()}``)
    to ``path`` as one file, atomically.

    Parameters
    ----------
    obj : dict, list, number, str, None or ndarray, nested (at most MAX_DEPTH levels)
    path : str, bytes or os.PathLike
    """
    path = _path(path, "save")
    arrays = {}
    tree = _encode(obj, arrays, "obj")
    header = json.dumps({"format": FORMAT, "version": VERSION, "tree": tree},
                        allow_nan=True).encode("utf-8")
    members = {HEADER: np.frombuffer(header, dtype=np.uint8)}
    members.update(arrays)

    def write(f):
        np.savez(f, **members)
    atomic_write(path, write)


def _path(path, fn):
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"{fn}: path must be a str, bytes or os.PathLike, got "
                        f"{type(path).__name__}") from None


def _decode(node, z, where, path, depth=0):
    if depth > MAX_DEPTH:
        raise FormatError(f"{path}: the structure is nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, list):
        return [_decode(v, z, f"{where}[{i}]", path, depth + 1) for i, v in enumerate(node)]
    if isinstance(node, dict):
        if "__array__" in node:
            name = node["__array__"]
            if not isinstance(name, str) or name not in z.files or name == HEADER:
                raise FormatError(f"{path}: the header names an array {name!r} the file does "
                                  f"not hold")
            a = z[name]
            if not isinstance(a, np.ndarray):
                raise FormatError(f"{path}: member {name!r} is not a NumPy array")
            if list(a.shape) != node.get("shape") or a.dtype.str != node.get("dtype"):
                raise FormatError(f"{path}: array {where} is {a.dtype.str} {a.shape}, the "
                                  f"header says {node.get('dtype')} {node.get('shape')}")
            if _array_digest(a) != node.get("sha256"):
                raise FormatError(f"{path}: array {where} does not match its checksum: the "
                                  f"file is corrupt")
            return np.require(a, requirements="C")     # (0-d arrays stay 0-d)
        return {k: _decode(v, z, f"{where}[{k!r}]", path, depth + 1) for k, v in node.items()}
    return node


def load(path):
    """Read a file written by :func:`save`; returns the saved structure.

    Raises
    ------
    FileNotFoundError
        No such file.
    FormatError
        Not a cygrad archive (a foreign .npz, a pickle, any other file), another
        format version, a truncated or corrupt file.
    """
    path = _path(path, "load")
    if os.path.isdir(path):
        raise IsADirectoryError(f"load: {path!r} is a directory, not a file written by "
                                f"cygrad.save")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        z = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise FormatError(f"{path}: not a cygrad archive (a single .npy array)")
        with z:
            if HEADER not in z.files:
                if any(n.endswith("data.pkl") for n in z.zip.namelist()):
                    raise FormatError(f"{path}: a PyTorch checkpoint (torch.save); "
                                      f"cygrad.load reads files written by cygrad.save (load "
                                      f"it with torch.load and copy the tensors' .numpy() "
                                      f"into a state_dict)")
                raise FormatError(f"{path}: not a cygrad archive (no {HEADER} header: a "
                                  f"foreign .npz?)")
            raw = z[HEADER]
            if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 1:
                raise FormatError(f"{path}: corrupt header")
            try:
                meta = json.loads(raw.tobytes().decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise FormatError(f"{path}: corrupt header ({type(e).__name__})") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise FormatError(f"{path}: not a cygrad state archive")
            if meta.get("version") != VERSION:
                raise FormatError(f"{path}: format version {meta.get('version')!r}; this "
                                  f"cygrad reads version {VERSION}")
            if "tree" not in meta:
                raise FormatError(f"{path}: corrupt header (no tree)")
            return _decode(meta["tree"], z, "obj", path)
    except FormatError:
        raise
    except ValueError as e:       # np.load: a pickle (refused), or not an array file at all
        raise FormatError(f"{path}: not a cygrad archive ({e})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zlib.error, NotImplementedError,
            # zipfile: a mangled method ("not supported") or flag ("encrypted")
            RuntimeError) as e:
        raise FormatError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {e})") \
            from None
