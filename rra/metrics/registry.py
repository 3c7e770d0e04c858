"""The registry of measures: every measure of the metric tables, declared once (methods.md §4).

:data:`MEASURES` maps a measure's name to a :class:`Measure`: its function, what it reads
(``kind``), the metric table its rows go to (``table``) and the values of that table's
``measure`` column it writes (``outputs``), and the properties a report prints, ReSi-style:
symmetric, larger-is-more-similar, needs embeddings, invariances and the [source]/[ours] tag
with its citation. :func:`measure_properties` returns them as one tidy table.
:mod:`rra.metrics.tables` computes each table from the measures registered for it.

Invariances (methods.md §4, "Properties of the measures"): the transformations of a compared
representation that leave the value unchanged. A measure that reads only kNN graphs changes
only when a graph does; under the graph's distance ``euclidean`` the graph is unchanged by
orthogonal transforms, isotropic scaling and translation, under ``cosine`` (rows L2-normalised)
by the first two only. Second-order cosine compares vectors of those distances by their cosine,
so scaling all distances of one embedding by the same factor leaves it unchanged too. Linear
CKA centres the columns and normalises by both self-similarities [source: Kornblith et al.
2019].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal

from rra.metrics import cka, peers, placement
from rra.metrics.class_response import class_response
from rra.metrics.classrepsim import classrepsim
from rra.metrics.nntp import nntp
from rra.metrics.nnts import nnts

#: what a measure reads, by ``kind``: the function's inputs
KINDS: dict[str, str] = {
    "pair": "two kNN graphs over the same rows",
    "pair+embeddings": "two kNN graphs and the two embeddings they were built from",
    "embeddings": "two embeddings of the same rows",
    "chain": "the kNN graphs of the hooks in forward order",
    "graph+labels": "one kNN graph and the labels",
    "scales+labels": "the kNN graphs of one hook at every pooled scale, and the labels",
    "heldout+embeddings": "the embeddings of a reference (training) probe and of held-out "
                          "images at the same hooks, with both sets' labels: a kNN model of "
                          "the reference rows with the held-out rows placed in it",
}
#: kinds whose measures read a second image set: their tables are written by their own stage
#: (``placement``: :func:`rra.metrics.placement.placement_stage`), not by ``run_tables``
HELDOUT_KINDS = ("heldout+embeddings",)
TAGS = ("source", "ours")

ORTHOGONAL, SCALING = "orthogonal transforms", "isotropic scaling"
#: invariances of a measure that reads kNN graphs only (see the module docstring)
GRAPH_INVARIANCES = (ORTHOGONAL, SCALING, "translation (euclidean distance only)")
CKA_INVARIANCES = (ORTHOGONAL, SCALING, "translation")


@dataclass(frozen=True)
class Measure:
    """One registered measure and its declared properties.

    name: the registry key. fn: the function computing it (its inputs: ``kind``, one of
    :data:`KINDS`). table: the metric table of :mod:`rra.metrics.tables` its rows go to;
    outputs: the values of that table's ``measure`` column it writes.
    symmetric: swapping the two compared representations (reversing the chain) leaves the
    value unchanged; larger_is_more_similar: a larger value means more similar
    representations; both ``None`` for a measure of one representation (class response).
    needs_embeddings: reads the embeddings, not only the graphs. invariances: transformations
    of a representation that leave the value unchanged. tag: ``source`` (as published) or
    ``ours``; source: the publication (or, for ``ours``, what it follows); note: the parts that
    are ours in a ``source`` measure.
    """

    name: str
    fn: Callable[..., Any]
    kind: str
    table: str
    outputs: tuple[str, ...]
    symmetric: bool | None
    larger_is_more_similar: bool | None
    needs_embeddings: bool
    invariances: tuple[str, ...]
    tag: Literal["source", "ours"]
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"measure {self.name!r}: kind {self.kind!r} is not one of {list(KINDS)}")
        if self.tag not in TAGS:
            raise ValueError(f"measure {self.name!r}: tag {self.tag!r} is not one of {TAGS}")
        if self.needs_embeddings != ("embeddings" in self.kind):
            raise ValueError(f"measure {self.name!r}: needs_embeddings={self.needs_embeddings} "
                             f"contradicts kind {self.kind!r}")
        # held-out placement has measures of one hook and one comparing consecutive hooks
        compares = None if self.kind in HELDOUT_KINDS else self.kind != "graph+labels"
        for flag in ("symmetric", "larger_is_more_similar"):
            value = getattr(self, flag)
            if ((compares is not None and (value is None) == compares)
                    or not (value is None or isinstance(value, bool))):
                raise ValueError(f"measure {self.name!r}: {flag} must be a bool for a measure "
                                 "comparing representations and None otherwise")
        if not self.outputs or not self.invariances or not self.source:
            raise ValueError(f"measure {self.name!r}: outputs, invariances and source must be "
                             "given")

    @property
    def tag_text(self) -> str:
        """The docstring tag, e.g. ``[source: Kornblith et al. 2019]``."""
        sep = ": " if self.tag == "source" else ", "
        note = f"; {self.note}" if self.note else ""
        return f"[{self.tag}{sep}{self.source}{note}]"


HRYNIOWSKI_WONG = "Hryniowski & Wong, arXiv:2012.03793"


def _placement_measures() -> tuple[Measure, ...]:
    """Held-out placement (E11, :mod:`rra.metrics.placement`): per hook, the held-out rows'
    kNN vote among the reference rows, the reference rows' leave-one-out vote, their gap and the
    held-out purity; per consecutive hooks, the agreement of the held-out rows' neighbour sets.
    The graphs' invariances, applied to the reference and held-out rows alike."""
    one = dict(kind="heldout+embeddings", table="placement", symmetric=None,
               larger_is_more_similar=None, needs_embeddings=True,
               invariances=GRAPH_INVARIANCES, tag="ours")
    return (
        Measure("placement_acc", placement.vote_accuracy, outputs=("placement_acc",),
                source="held-out kNN-vote accuracy in a training probe's kNN model (E11)", **one),
        Measure("placement_train_acc", placement.vote_accuracy,
                outputs=("placement_train_acc",),
                source="leave-one-out kNN-vote accuracy of the training probe (E11)", **one),
        Measure("placement_gap", placement.gap, outputs=("placement_gap",),
                source="training-probe minus held-out kNN-vote accuracy (E11)", **one),
        Measure("placement_purity", placement.purity, outputs=("placement_purity",),
                source="held-out kNN class purity in a training probe's kNN model (E11)", **one),
        Measure("placement_agreement", placement.agreement, outputs=("placement_agreement",),
                **{**one, "symmetric": True, "larger_is_more_similar": True},
                source="consecutive hooks' held-out neighbour sets (E11)",
                note="NNTS of Hryniowski & Wong on the held-out rows"),
    )

MEASURES: dict[str, Measure] = {m.name: m for m in (
    Measure("nnts", nnts, "pair", "nnts", ("nnts", "nnts_class"),
            symmetric=True, larger_is_more_similar=True, needs_embeddings=False,
            invariances=GRAPH_INVARIANCES, tag="source", source=HRYNIOWSKI_WONG),
    Measure("nntp", nntp, "chain", "nntp", ("nntp_edges", "nntp_runs", "nntp_persistent_all"),
            symmetric=True, larger_is_more_similar=True, needs_embeddings=False,
            invariances=GRAPH_INVARIANCES, tag="source", source=HRYNIOWSKI_WONG,
            note="persistent_all for alpha > 0 ours"),
    Measure("class_response", class_response, "graph+labels", "class_response",
            ("class_composition", "knn_vote_accuracy_class", "knn_purity", "knn_purity_rows",
             "knn_vote_accuracy"),
            symmetric=None, larger_is_more_similar=None, needs_embeddings=False,
            invariances=GRAPH_INVARIANCES, tag="ours",
            source="after ClassRepSim's class representational response"),
    Measure("classrepsim", classrepsim, "scales+labels", "classrepsim",
            ("classrepsim_mean", "classrepsim_spread", "classrepsim", "class_response_agreement"),
            symmetric=True, larger_is_more_similar=True, needs_embeddings=False,
            invariances=GRAPH_INVARIANCES, tag="ours",
            source="reconstruction of Hryniowski & Wong, CVPRW 2023"),
    Measure("mutual_knn", peers.mutual_knn, "pair", "peers", ("mutual_knn",),
            symmetric=True, larger_is_more_similar=True, needs_embeddings=False,
            invariances=GRAPH_INVARIANCES, tag="source",
            source="Huh et al. 2024, platonic representation hypothesis"),
    Measure("cycle_knn", peers.cycle_knn, "pair", "peers", ("cycle_knn",),
            symmetric=False, larger_is_more_similar=True, needs_embeddings=False,
            invariances=GRAPH_INVARIANCES, tag="source",
            source="Huh et al. 2024, platonic-rep cycle_knn"),
    Measure("rank_similarity", peers.rank_similarity, "pair", "peers", ("rank_similarity",),
            symmetric=True, larger_is_more_similar=True, needs_embeddings=False,
            invariances=GRAPH_INVARIANCES, tag="source",
            source="Klabunde et al., ReSi rank similarity"),
    Measure("second_order_cosine", peers.second_order_cosine, "pair+embeddings", "peers",
            ("second_order_cosine",),
            symmetric=True, larger_is_more_similar=True, needs_embeddings=True,
            invariances=GRAPH_INVARIANCES, tag="source",
            source="Hamilton et al. 2016, as in ReSi",
            note="distances and zero-vector convention ours"),
    Measure("linear_cka", partial(cka.linear_cka, debiased=False), "embeddings", "cka",
            ("linear_cka",),
            symmetric=True, larger_is_more_similar=True, needs_embeddings=True,
            invariances=CKA_INVARIANCES, tag="source", source="Kornblith et al. 2019"),
    Measure("linear_cka_debiased", partial(cka.linear_cka, debiased=True), "embeddings", "cka",
            ("linear_cka_debiased",),
            symmetric=True, larger_is_more_similar=True, needs_embeddings=True,
            invariances=CKA_INVARIANCES, tag="source",
            source="Kornblith et al. 2019; Song et al. 2012 unbiased HSIC; Nguyen et al. 2021"),
    *_placement_measures(),
)}


def measures_in(table: str) -> list[Measure]:
    """The registered measures whose rows go to metric table ``table``, in registry order."""
    found = [m for m in MEASURES.values() if m.table == table]
    if not found:
        known = list(dict.fromkeys(m.table for m in MEASURES.values()))
        raise ValueError(f"no registered measure writes table {table!r}; tables: {known}")
    return found


#: the columns of :func:`measure_properties`, in order
PROPERTY_COLUMNS = ("name", "table", "kind", "symmetric", "larger_is_more_similar",
                    "needs_embeddings", "invariances", "tag", "source", "note", "outputs")


def measure_properties():
    """The registry as a tidy polars table, one row per measure in registry order.

    Columns (:data:`PROPERTY_COLUMNS`): ``name``, ``table``, ``kind`` (str); ``symmetric``,
    ``larger_is_more_similar`` (bool, null for a measure of one representation),
    ``needs_embeddings`` (bool); ``invariances`` (str, "; "-joined); ``tag`` ("source" /
    "ours"), ``source``, ``note`` (str); ``outputs`` (str, "; "-joined values of the table's
    ``measure`` column).
    """
    import polars as pl

    rows = [{col: "; ".join(v) if isinstance(v := getattr(m, col), tuple) else v
             for col in PROPERTY_COLUMNS} for m in MEASURES.values()]
    schema = {col: pl.Boolean if col in ("symmetric", "larger_is_more_similar", "needs_embeddings")
              else pl.Utf8 for col in PROPERTY_COLUMNS}
    return pl.DataFrame(rows, schema=schema)
