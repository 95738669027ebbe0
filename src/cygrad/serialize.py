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
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "cygrad-state"
VERSION = 1
HEADER = "__cygrad__"

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
    place (and sync the directory); returns the SHA-256 of what was written."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())    # as open() would have made it, not mkstemp's 0600
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


def _encode(obj, arrays, where):
    """The JSON-able structure of obj; arrays go into ``arrays``."""
    from cygrad.graph import Tensor
    if isinstance(obj, Tensor):
        obj = obj.data
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise TypeError(f"save: {where} is an array of dtype {obj.dtype}; only numeric and "
                            f"boolean arrays can be saved (no pickled objects)")
        name = f"a{len(arrays)}"
        arrays[name] = obj
        return {"__array__": name, "shape": list(obj.shape), "dtype": obj.dtype.str,
                "sha256": _array_digest(obj)}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"save: {where} has a key {k!r} of type {type(k).__name__}; "
                                f"keys must be strings")
            if k.startswith("__") and k.endswith("__"):
                raise ValueError(f"save: {where} has the reserved key {k!r}")
            out[k] = _encode(v, arrays, f"{where}[{k!r}]")
        return out
    raise TypeError(f"save: {where} is a {type(obj).__name__}; cygrad.save takes dicts, lists, "
                    f"numbers, strings, None and NumPy arrays (use state_dict() for modules "
                    f"and optimisers)")


def save(obj, path):
    """Write ``obj`` (e.g. ``{"model": model.state_dict(), "optim": opt.state_dict()}``)
    to ``path`` as one file, atomically.

    Parameters
    ----------
    obj : dict, list, number, str, None or ndarray, nested
    path : str or os.PathLike
    """
    arrays = {}
    tree = _encode(obj, arrays, "obj")
    header = json.dumps({"format": FORMAT, "version": VERSION, "tree": tree},
                        allow_nan=True).encode("utf-8")
    members = {HEADER: np.frombuffer(header, dtype=np.uint8)}
    members.update(arrays)

    def write(f):
        np.savez(f, **members)
    atomic_write(os.fspath(path), write)


def _decode(node, z, where, path):
    if isinstance(node, list):
        return [_decode(v, z, f"{where}[{i}]", path) for i, v in enumerate(node)]
    if isinstance(node, dict):
        if "__array__" in node:
            name = node["__array__"]
            if not isinstance(name, str) or name not in z.files or name == HEADER:
                raise FormatError(f"{path}: the header names an array {name!r} the file does "
                                  f"not hold")
            a = z[name]
            if list(a.shape) != node.get("shape") or a.dtype.str != node.get("dtype"):
                raise FormatError(f"{path}: array {where} is {a.dtype.str} {a.shape}, the "
                                  f"header says {node.get('dtype')} {node.get('shape')}")
            if _array_digest(a) != node.get("sha256"):
                raise FormatError(f"{path}: array {where} does not match its checksum: the "
                                  f"file is corrupt")
            return np.ascontiguousarray(a)
        return {k: _decode(v, z, f"{where}[{k!r}]", path) for k, v in node.items()}
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
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise FormatError(f"{path}: not a cygrad archive (a single .npy array)")
            if HEADER not in z.files:
                raise FormatError(f"{path}: not a cygrad archive (no {HEADER} header: a "
                                  f"foreign .npz?)")
            raw = z[HEADER]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise FormatError(f"{path}: corrupt header")
            try:
                meta = json.loads(raw.tobytes().decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise FormatError(f"{path}: corrupt header ({e})") from None
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise FormatError(f"{path}: not a cygrad state archive")
            if meta.get("version") != VERSION:
                raise FormatError(f"{path}: format version {meta.get('version')!r}; this "
                                  f"cygrad reads version {VERSION}")
            return _decode(meta.get("tree"), z, "obj", path)
    except FormatError:
        raise
    except ValueError as e:       # np.load: a pickle (refused), or not an array file at all
        raise FormatError(f"{path}: not a cygrad archive ({e})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zlib.error, NotImplementedError,
            RuntimeError) as e:     # zipfile: a mangled method ("not supported") or flag ("encrypted")
        raise FormatError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {e})") \
            from None
