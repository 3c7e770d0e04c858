"""Metrics derived from the common kNN model (methods.md §4), with a registry of their properties.

Every measure is a pure function of neighbour-index arrays (and labels or embeddings where
stated). :data:`MEASURES` (:mod:`rra.metrics.registry`) declares each measure once: its
function, the table its rows go to, and the properties reports print (ReSi-style): symmetric,
larger-is-more-similar, needs embeddings, invariances, and the [source]/[ours] tag;
:func:`measure_properties` returns them as a table. Table builders live in
:mod:`rra.metrics.tables`.
"""

from __future__ import annotations

from rra.metrics.class_response import class_response
from rra.metrics.classrepsim import choose_stac_scale, choose_stac_scale_within, classrepsim
from rra.metrics.nntp import nntp
from rra.metrics.nnts import nnts, nnts_by_class, nnts_matrix
from rra.metrics.registry import MEASURES, Measure, measure_properties, measures_in

__all__ = ["MEASURES", "Measure", "measure_properties", "measures_in", "nnts", "nnts_matrix",
           "nnts_by_class", "nntp", "class_response", "classrepsim", "choose_stac_scale",
           "choose_stac_scale_within"]
