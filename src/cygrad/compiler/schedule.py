"""Scheduling and the workspace layout: tasks that touch the same rows or columns of
what they share go into one group (chunk c of each runs on one thread, in order),
independent groups into one stage (one loop of the thread pool); then every
workspace buffer gets its offset in the arena, every view its index, and the
executor's tables are written (cygrad.compiler._plan.Plan takes them)."""

from cygrad.compiler._plan import AXES, DIMS, TASK_CODES
from cygrad.compiler.builder import COLS, ONE, ROW_GRAIN, ROWS

ALIGN = 64              # bytes: every workspace buffer starts on a cache line


def schedule(tasks):
    """Group tasks that touch the same rows/columns of what they share into
    groups, independent groups into stages (see cygrad._plan)."""
    stages = []     # each: list of groups; group: dict(space, tasks)

    def conflict(a, b):     # two accesses (view, rw, pattern) to one buffer, one writing
        return a[0].buf is b[0].buf and ("w" in (a[1], b[1]))

    def aligned(a, b, axis):
        va, vb = a[0], b[0]
        if a[2] != axis or b[2] != axis:
            return False
        if axis == ROWS:
            return True
        return va.off == vb.off and va.ld == vb.ld

    for t in tasks:
        kind, n1, n2 = t.space
        placed = False
        if stages:
            st = stages[-1]
            g = st[-1]
            gaxis, gn, ggrain = g["space"]
            space = None
            if kind == "elem":
                if gaxis == ROWS and gn == n1:
                    space = g["space"]
                elif gaxis == COLS and gn == n2:
                    space = g["space"]
            elif t.space == g["space"] and kind != ONE:
                # (a task over one chunk, a table's update, is a group of its own:
                # independent ones then run side by side)
                space = g["space"]
            if space is not None:
                acc = [(a[0], a[1], space[0] if a[2] == "elem" else a[2]) for a in t.access]
                ok = True
                for other_g in st:
                    for ot in other_g["tasks"]:
                        for b in ot["acc"]:
                            for a in acc:
                                if conflict(a, b) and not (other_g is g
                                                           and aligned(a, b, space[0])):
                                    ok = False
                if ok:
                    g["tasks"].append({"t": t, "acc": acc})
                    t.space = space
                    placed = True
            if not placed:
                own = _own_space(t)
                acc = [(a[0], a[1], own[0] if a[2] == "elem" else a[2]) for a in t.access]
                indep = all(not conflict(a, b) for og in st for ot in og["tasks"]
                            for b in ot["acc"] for a in acc)
                if indep:
                    t.space = own
                    st.append({"space": own, "tasks": [{"t": t, "acc": acc}]})
                    placed = True
        if not placed:
            own = _own_space(t)
            acc = [(a[0], a[1], own[0] if a[2] == "elem" else a[2]) for a in t.access]
            t.space = own
            stages.append([{"space": own, "tasks": [{"t": t, "acc": acc}]}])
    return stages

def _own_space(t):
    kind, n1, n2 = t.space
    if kind == "elem":
        return (ROWS, n1, ROW_GRAIN)
    return t.space


def layout(builder, stages):
    """Arena offsets, buffer and view indices, and the C-level tables of the plan."""
    views = []
    ext_list = []
    arena = 0

    def view_index(v):
        if v is None:
            return -1
        if v.index is None:
            b = v.buf
            if b.ext is None:
                if b.offset is None:
                    b.offset = arena_alloc(b.nbytes)
                base, off = 0, b.offset
            else:
                if b.index is None:
                    b.index = 1 + len(ext_list)
                    ext_list.append(b)
                base, off = b.index, 0
            v.index = len(views)
            views.append((base, off + v.off * v.item, v.ld))
        return v.index

    def arena_alloc(n):
        nonlocal arena
        off = arena
        arena += -(-max(n, 1) // ALIGN) * ALIGN
        return off

    tasks, groups, st_tab = [], [], []
    for st in stages:
        g0 = len(groups)
        for g in st:
            t0 = len(tasks)
            for e in g["tasks"]:
                t = e["t"]
                tasks.append({
                    "code": TASK_CODES[t.name], "axis": AXES.get(t.space[0], AXES[ROWS]),
                    "mode": t.mode,
                    "act": t.act, "m": t.m, "k": t.k, "h": t.h, "w": t.w, "alpha": t.alpha,
                    "pidx": t.pidx,
                    "v": [view_index(v) for v in t.v],
                    "segs": [(view_index(iv), view_index(gv), B) for iv, gv, B in t.segs]})
            groups.append((t0, len(tasks), g["space"][1], g["space"][2],
                           DIMS.get(g["space"][0], 0)))
        st_tab.append((g0, len(groups)))
    # inputs copied into the arena
    for spec in builder.inputs.values():
        if spec["kind"] == "ids":
            view_index(spec["view"])
    return tasks, groups, st_tab, views, ext_list, arena
