"""Entity-level precision, recall and F1 with conlleval's chunk rules.

A chunk (entity) starts at B- or S-, or at I-/E- when the previous token is O,
of another type, or closed its chunk; it ends before a token that starts a new
chunk or is O. So an I-PER after O opens a PER entity, as conlleval reads it.
A predicted entity is correct when its type, start and end all match a gold one.

Given the sentences' tokens and a set of entity surface forms seen in training,
:func:`evaluate` also scores the entities whose exact surface form is in that
set ("seen") apart from the others ("unseen"): a gold or predicted entity
belongs to the part of its own surface form, so precision, recall and F1 of
each part are those of an evaluation restricted to it. Unseen entities are what
a tagger that memorises names gets wrong.
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
    seen: "Scores | None" = None       # the parts, when evaluate() was given seen forms
    unseen: "Scores | None" = None

    def summary(self):
        s = (f"P {100 * self.precision:.2f}  R {100 * self.recall:.2f}  "
             f"F1 {100 * self.f1:.2f}  token acc {100 * self.accuracy:.2f}")
        if self.seen is not None:
            s += f"  (F1 seen {100 * self.seen.f1:.2f}, unseen {100 * self.unseen.f1:.2f})"
        return s

    def table(self):
        lines = [f"{'type':<8}{'P':>8}{'R':>8}{'F1':>8}{'gold':>8}",
                 f"{'all':<8}{100 * self.precision:8.2f}{100 * self.recall:8.2f}"
                 f"{100 * self.f1:8.2f}{self.gold:8d}"]
        for typ, (p, r, f, g) in sorted(self.per_type.items()):
            lines.append(f"{typ:<8}{100 * p:8.2f}{100 * r:8.2f}{100 * f:8.2f}{g:8d}")
        for name in ("seen", "unseen"):
            part = getattr(self, name)
            if part is not None:
                lines.append(f"{name:<8}{100 * part.precision:8.2f}{100 * part.recall:8.2f}"
                             f"{100 * part.f1:8.2f}{part.gold:8d}")
        return "\n".join(lines)


def _prf(correct, found, gold):
    p = correct / found if found else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def evaluate(gold_sentences, pred_sentences, tokens=None, seen=None):
    """Score predicted tag sequences against gold ones (lists of lists of tags).

    With ``tokens`` (the sentences' token lists) and ``seen`` (a set of surface
    forms, see cygrad.ner.data.entity_forms), the result's ``seen`` and
    ``unseen`` hold the scores of the two parts.
    """
    if seen is not None:
        if tokens is None:
            raise ValueError("evaluate: seen= needs the sentences' tokens")
        seen = set(seen)
        parts = {True: ([], []), False: ([], [])}
    found = gold = correct = tokens_n = right = 0
    by_type = collections.defaultdict(lambda: [0, 0, 0])   # correct, found, gold
    for i, (g_tags, p_tags) in enumerate(zip(gold_sentences, pred_sentences, strict=True)):
        if len(g_tags) != len(p_tags):
            raise ValueError(f"evaluate: a sentence has {len(g_tags)} gold tags and "
                             f"{len(p_tags)} predicted")
        tokens_n += len(g_tags)
        right += sum(a == b for a, b in zip(g_tags, p_tags))
        g, p = set(chunks(g_tags)), set(chunks(p_tags))
        if seen is not None:
            toks = tokens[i]
            if len(toks) != len(g_tags):
                raise ValueError(f"evaluate: sentence {i} has {len(toks)} tokens and "
                                 f"{len(g_tags)} tags")
            for which, ents in ((0, g), (1, p)):
                for c in ents:
                    parts[" ".join(toks[c[1]:c[2]]) in seen][which].append((i,) + c)
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
    acc = right / tokens_n if tokens_n else 0.0
    out = Scores(P, R, F, acc, found, gold, correct, per_type)
    if seen is not None:
        for key, name in ((True, "seen"), (False, "unseen")):
            g, p = map(set, parts[key])
            c = len(g & p)
            setattr(out, name, Scores(*_prf(c, len(p), len(g)), acc, len(p), len(g), c, {}))
    return out


# -- scoring a model (cygrad.ner.train and the CLI call these)

def tags_of(model, enc):
    """Predicted tag strings, one list per sentence."""
    return model.tags(model.predict(enc), enc.offsets)


def gold_tags(model, sentences):
    """Gold tags as the model is scored on them: in the binary task only the
    positive type's entities count."""
    if not model.config.binary:
        return [s.tags for s in sentences]
    keep = model.config.positive
    return [[t if t[2:] == keep else "O" for t in s.tags] for s in sentences]


def score(model, sentences, enc=None, seen=None):
    """Entity scores of ``model`` on tagged sentences; seen and unseen entities
    apart too, by the surface forms ``seen`` (default: the model's training
    entities, if it stored them)."""
    enc = enc if enc is not None else model.encode(sentences)
    seen = model.vocab.entities if seen is None else seen
    return evaluate(gold_tags(model, sentences), tags_of(model, enc),
                    tokens=[s.tokens for s in sentences] if seen else None,
                    seen=seen or None)
