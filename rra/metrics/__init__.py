"""Metrics derived from the common kNN model (methods.md §3), with a registry of their properties.

Every measure is a pure function of neighbour-index arrays (and labels or embeddings where
stated). :data:`MEASURES` declares, per measure name, the function and the properties reports
print (ReSi-style): symmetric, larger-is-more-similar, needs embeddings, and the [source]/[ours]
tag. Table builders live in :mod:`rra.metrics.tables`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from rra.metrics import cka, peers
from rra.metrics.class_response import class_response
from rra.metrics.classrepsim import choose_stac_scale, choose_stac_scale_within, classrepsim
from rra.metrics.nntp import nntp
from rra.metrics.nnts import nnts, nnts_by_class, nnts_matrix


@dataclass(frozen=True)
class Measure:
    """A named measure: its function and declared properties.

    kind: ``pair`` (two graphs over the same rows → a number), ``pair+embeddings`` (also needs
    the two embeddings), ``embeddings`` (two embeddings, no graph), ``chain`` (a sequence of
    graphs), ``graph+labels`` (one graph and the labels), ``scales+labels`` (one hook's graphs
    across scales and the labels).
    """

    name: str
    fn: Callable[..., Any]
    kind: str
    symmetric: bool | None
    larger_is_more_similar: bool | None
    tag: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_embeddings(self) -> bool:
        return "embeddings" in self.kind


def _from_properties(name: str, fn: Callable, kind: str, props: dict) -> Measure:
    extra = {k: v for k, v in props.items()
             if k not in {"symmetric", "larger_is_more_similar", "needs_embeddings", "kind", "tag"}}
    return Measure(name, fn, kind, props["symmetric"], props["larger_is_more_similar"], props["tag"], extra)


MEASURES: dict[str, Measure] = {
    "nnts": Measure("nnts", nnts, "pair", True, True,
                    "[source: Hryniowski & Wong, arXiv:2012.03793]"),
    "nntp": Measure("nntp", nntp, "chain", None, None,
                    "[source: Hryniowski & Wong, arXiv:2012.03793]"),
    "class_response": Measure("class_response", class_response, "graph+labels", None, None,
                              "[ours, after ClassRepSim's class representational response]"),
    "classrepsim": Measure("classrepsim", classrepsim, "scales+labels", True, True,
                           "[ours, reconstruction of Hryniowski & Wong, CVPRW 2023]"),
    "mutual_knn": _from_properties("mutual_knn", peers.mutual_knn, "pair", peers.PROPERTIES["mutual_knn"]),
    "cycle_knn": _from_properties("cycle_knn", peers.cycle_knn, "pair", peers.PROPERTIES["cycle_knn"]),
    "rank_similarity": _from_properties("rank_similarity", peers.rank_similarity, "pair",
                                        peers.PROPERTIES["rank_similarity"]),
    "second_order_cosine": _from_properties("second_order_cosine", peers.second_order_cosine,
                                            "pair+embeddings", peers.PROPERTIES["second_order_cosine"]),
    "linear_cka": _from_properties("linear_cka", partial(cka.linear_cka, debiased=False), "embeddings",
                                   cka.PROPERTIES["linear_cka"]),
    "linear_cka_debiased": _from_properties("linear_cka_debiased", partial(cka.linear_cka, debiased=True),
                                            "embeddings", cka.PROPERTIES["linear_cka_debiased"]),
}


__all__ = ["MEASURES", "Measure", "nnts", "nnts_matrix", "nnts_by_class", "nntp",
           "class_response", "classrepsim", "choose_stac_scale",
           "choose_stac_scale_within"]
