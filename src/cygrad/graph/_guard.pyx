"""What a graph node saved for backward, and its write protection: PyTorch's
version counters, for NumPy arrays (used by cygrad.graph.engine).

A recorded node that saved tensor arrays (its inputs' ``.data``, its output's,
and the arrays those are views of) makes them read-only until backward has run
through it or the node is freed, so that an in-place write in between, which
would make backward silently wrong, is refused by NumPy. cygrad's own writers
(optimisers, compiled steps) write protected arrays all the same and bump their
version; backward through a node whose saved arrays changed version raises.

An array saved by several live nodes has one entry with a count. A view whose
count ends while the array it views is still protected waits until that one is
released. No Python lock: every change of the registry below is made with the
GIL held and without running Python code or allocating a collectable object in
the middle of it, so neither another thread nor a garbage collection that frees
a Context (and so releases its arrays) can see a half-done change.
"""

cimport cython
cimport numpy as cnp

cnp.import_array()

cdef dict _locks = {}       # id(array) -> _Entry
cdef dict _waiting = {}     # id(view) -> view, read-only until what it views is released


@cython.no_gc          # holds an array only: no cycle goes through it, and a
cdef class _Entry:     # collection must not clear it before a Context lets it go
    cdef object array
    cdef Py_ssize_t count
    cdef Py_ssize_t version


@cython.no_gc_clear    # __dealloc__ needs `locked`
cdef class Context:
    """Carries what a forward saves for its backward (``save_for_backward``), and
    the op's notes (``needs``: which inputs need a gradient; ``shapes``, ``kw``)."""

    cdef public object saved, needs, shapes, kw
    cdef tuple locked           # ((entry, version when saved, input index or -1), ...)

    def __cinit__(self):
        self.saved = ()
        self.locked = ()

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def release(self):
        """Let go of the saved arrays' protection (after backward ran through)."""
        cdef tuple locked = self.locked
        if locked:
            self.locked = ()
            _unlock(locked)

    def changed(self):
        """The first saved array written since: (input index or -1, version then,
        version now), or None."""
        cdef _Entry e
        for rec in self.locked:
            e = <_Entry>rec[0]
            if e.version != rec[1]:
                return rec[2], rec[1], e.version
        return None

    def __dealloc__(self):
        if self.locked:
            _unlock(self.locked)


cdef inline bint _writeable(object a):
    return cnp.PyArray_ISWRITEABLE(<cnp.ndarray?>a)


def protect(Context ctx, tuple inputs, object out, type tensor_type):
    """Protect the tensor arrays that ``ctx`` saved (of ``inputs`` and ``out``)."""
    cdef list cands = []
    cdef Py_ssize_t i, k, n
    cdef _Entry e, fresh
    saved = ctx.saved
    for i in range(len(inputs)):
        x = inputs[i]
        if isinstance(x, tensor_type):
            a = x.data
            if not isinstance(a, cnp.ndarray):     # a NumPy scalar from a 0-d op
                continue
            for s in saved:
                if s is a:
                    cands.append((a, i))
                    break
    if isinstance(out, cnp.ndarray):
        for s in saved:
            if s is out:
                cands.append((out, -1))
    n = len(cands)
    for k in range(n):                  # the arrays they view, after them
        base = cands[k][0].base
        if isinstance(base, cnp.ndarray):
            cands.append((base, cands[k][1]))
    cdef list locked = []
    for a, i in cands:
        fresh = _Entry.__new__(_Entry)  # allocated before the registry is read
        key = id(a)
        e = _locks.get(key)
        if e is not None and e.array is a:
            e.count += 1
        elif _writeable(a):
            cnp.PyArray_CLEARFLAGS(<cnp.ndarray?>a, cnp.NPY_ARRAY_WRITEABLE)
            fresh.array, fresh.count, fresh.version = a, 1, 0
            _locks[key] = fresh
            _waiting.pop(key, None)
            e = fresh
        else:
            continue
        locked.append((e, e.version, i))
    ctx.locked = tuple(locked)


cdef _unlock(tuple locked):
    cdef _Entry e
    cdef bint freed = False
    cdef Py_ssize_t k
    for k in range(len(locked) - 1, -1, -1):    # bases before their views
        e = <_Entry>locked[k][0]
        e.count -= 1
        if e.count == 0:
            a = e.array
            key = id(a)
            if _locks.get(key) is e:
                del _locks[key]
            base = (<object>a).base
            if isinstance(base, cnp.ndarray) and not _writeable(base):
                _waiting[key] = a
            else:
                cnp.PyArray_ENABLEFLAGS(<cnp.ndarray?>a, cnp.NPY_ARRAY_WRITEABLE)
                freed = True
    while freed and _waiting:
        freed = False
        for key in list(_waiting):
            a = _waiting.get(key)
            if a is None or key in _locks:
                continue
            base = (<object>a).base
            if not _writeable(base):
                continue
            del _waiting[key]
            cnp.PyArray_ENABLEFLAGS(<cnp.ndarray?>a, cnp.NPY_ARRAY_WRITEABLE)
            freed = True


cdef inline _Entry _entry(object a):
    if not isinstance(a, cnp.ndarray):
        return None
    e = _locks.get(id(a))
    if e is not None and (<_Entry>e).array is a:
        return <_Entry>e
    return None


def written(tensors):
    """For the writers that do not go through NumPy (compiled steps): bump the
    version of every protected array of ``tensors`` (their ``.data`` and what it
    views)."""
    cdef _Entry e
    if not _locks:
        return
    for t in tensors:
        a = t.data
        e = _entry(a)
        if e is not None:
            e.version += 1
        base = getattr(a, "base", None)
        if isinstance(base, cnp.ndarray):
            e = _entry(base)
            if e is not None:
                e.version += 1


def open_for_writing(tensors):
    """For the writers that go through NumPy or memoryviews (optimisers): bump the
    versions as ``written`` does and make the protected ``.data`` arrays writable;
    returns what to hand to ``close_for_writing`` afterwards."""
    if not _locks:
        return ()
    written(tensors)
    opened = []
    for t in tensors:
        a = t.data
        if _entry(a) is not None and not _writeable(a):
            opened.append(a)
    for a in opened:
        cnp.PyArray_ENABLEFLAGS(<cnp.ndarray?>a, cnp.NPY_ARRAY_WRITEABLE)
    return opened


def close_for_writing(opened):
    for a in opened:
        if _entry(a) is not None:
            cnp.PyArray_CLEARFLAGS(<cnp.ndarray?>a, cnp.NPY_ARRAY_WRITEABLE)


def is_protected(array):
    """True when ``array`` is read-only because a live graph node saved it."""
    return _entry(array) is not None


def n_protected():
    """How many arrays are protected now, and how many views wait (for tests)."""
    return len(_locks), len(_waiting)
