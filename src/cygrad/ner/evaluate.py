"""Entity-level precision, recall and F1 with conlleval's chunk rules.

A chunk (entity) starts at B- or S-, or at I-/E- when the previous token is O,
of another type, or closed its chunk; it ends before a token that starts a new
chunk or is O. So an I-PER after O opens a PER entity, as conlleval reads it.
A predicted entity is correct when its type, start and end all match a gold one.
"""

import collections
import dataclasses


def _split(tag):
    if tag == "O" or "-" not in tag:
        return "O", None
    prefix, typ = tag.split("-", 1)
    return prefix, typ


def chunks(tags):
    """The entities of one sentence as a list of (type, start, end), end exclusive."""
    out, start, typ = [], None, None
    prev_prefix, prev_type = "O", None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, t = _split(tag)
        ends = start is not None and (
            prev_prefix in ("E", "S", "L", "U")
            or prefix in ("B", "S", "U", "O")
            or t != prev_type)
        if ends:
            out.append((typ, start, i))
            start = None
        opens = prefix != "O" and (
            prefix in ("B", "S", "U")
            or prev_prefix in ("E", "S", "L", "U", "O")
            or t != prev_type
            or start is None)
        if opens:
            start, typ = i, t
        prev_prefix, prev_type = prefix, t
    return out


@dataclasses.dataclass
class Scores:
    precision: float
    recall: float
    f1: float
    accuracy: float
    found: int
    gold: int
    correct: int
    per_type: dict

    def summary(self):
        return (f"P {100 * self.precision:.2f}  R {100 * self.recall:.2f}  "
                f"F1 {100 * self.f1:.2f}  token acc {100 * self.accuracy:.2f}")

    def table(self):
        lines = [f"{'type':<8}{'P':>8}{'R':>8}{'F1':>8}{'gold':>8}",
                 f"{'all':<8}{100 * self.precision:8.2f}{100 * self.recall:8.2f}"
                 f"{100 * self.f1:8.2f}{self.gold:8d}"]
        for typ, (p, r, f, g) in sorted(self.per_type.items()):
            lines.append(f"{typ:<8}{100 * p:8.2f}{100 * r:8.2f}{100 * f:8.2f}{g:8d}")
        return "\n".join(lines)


def _prf(correct, found, gold):
    p = correct / found if found else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def evaluate(gold_sentences, pred_sentences):
    """Score predicted tag sequences against gold ones (lists of lists of tags)."""
    found = gold = correct = tokens = right = 0
    by_type = collections.defaultdict(lambda: [0, 0, 0])   # correct, found, gold
    for g_tags, p_tags in zip(gold_sentences, pred_sentences, strict=True):
        if len(g_tags) != len(p_tags):
            raise ValueError(f"evaluate: a sentence has {len(g_tags)} gold tags and "
                             f"{len(p_tags)} predicted")
        tokens += len(g_tags)
        right += sum(a == b for a, b in zip(g_tags, p_tags))
        g, p = set(chunks(g_tags)), set(chunks(p_tags))
        found += len(p)
        gold += len(g)
        correct += len(g & p)
        for c in g:
            by_type[c[0]][2] += 1
        for c in p:
            by_type[c[0]][1] += 1
        for c in g & p:
            by_type[c[0]][0] += 1
    P, R, F = _prf(correct, found, gold)
    per_type = {t: _prf(c, f, g) + (g,) for t, (c, f, g) in by_type.items()}
    return Scores(P, R, F, right / tokens if tokens else 0.0, found, gold, correct, per_type)
