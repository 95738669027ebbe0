"""The window model's token features, in one table.

Each row says, for one feature: the model's embedding table (its parameter
name), the :class:`cygrad.ner.data.Encoded` field holding its id windows, the
:class:`cygrad.ner.model.Config` field giving its size (0: the feature is off),
its column in ``Encoded.type_ids`` (what ``encode`` looks up once per distinct
token), and where its entries are listed (the Vocab field, or the fixed
:data:`cygrad.ner.data.CASES`). The order of :data:`FEATURES` is the order the
window's vectors are concatenated in; everything that needs the features
(``Config.input_size``, the model's shapes, its graph, the scoring passes, the
per-type projections and ``encode``) reads this table.

The character n-gram bags (``Config.ngram_dim``, table ``N``) are not a row: a
token has a bag of n-gram rows, not one id, and they come after the tables.
"""

import dataclasses

__all__ = ["Feature", "FEATURES", "BY_TABLE", "active", "feature_ids"]


@dataclasses.dataclass(frozen=True)
class Feature:
    table: str          # the model's parameter name of its embedding table
    field: str          # Encoded's field of its id windows (and the keyword that passes them)
    size: str           # Config's field of its vector size (0: off)
    column: int         # its column of Encoded.type_ids
    entries: str        # Vocab's list of its entries ("" for casing: data.CASES)


FEATURES = (
    Feature("E", "words", "dim", 0, "words"),
    Feature("S", "suffixes", "suffix_dim", 1, "suffixes"),
    Feature("Cs", "cases", "case_dim", 2, ""),
    Feature("P", "prefixes", "prefix_dim", 3, "prefixes"),
    Feature("Sh", "shapes", "shape_dim", 4, "shapes"),
)
BY_TABLE = {f.table: f for f in FEATURES}
assert [f.column for f in FEATURES] == list(range(len(FEATURES)))


def active(config):
    """The features a model configuration reads (size > 0), in concatenation order."""
    return [f for f in FEATURES if getattr(config, f.size)]


def feature_ids(config, given):
    """{table: id windows} for the features ``config`` reads, from ``given``
    (field name -> array or None); a feature the model reads and ``given`` lacks
    is refused by name."""
    out = {}
    for f in active(config):
        ids = given.get(f.field)
        if ids is None:
            raise ValueError(f"this model reads the {f.field} feature: pass {f.field}=")
        out[f.table] = ids
    return out
