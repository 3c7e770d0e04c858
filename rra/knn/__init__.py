"""The common kNN model (methods.md §2). [source: directed kNN graph, Euclidean distance]

For each embedding (model, hook, scale), K[i] = the k nearest other rows of row i, self
excluded, sorted by (distance, index): ties, at the k-th place too, go to the smaller row index.
Stored as n × k_max int32 indices plus float32 distances; the graph at k is the first k columns.
``euclidean``: ‖x_i − x_j‖; ``cosine`` [ours, as peers do]: the Euclidean distance of
L2-normalised rows, sqrt(2 − 2 cos) (Annoy's ``angular``, same order as 1 − cos).

Backends: ``exact`` (blocked matrix products, certified against float64: the ground truth) and
``annoy`` (seeded, single-threaded build; recall@k measured against exact on held-out rows,
at every analysed k; below its target an error, or with ``on_recall_miss="warn"`` a flagged
graph).
Distances are always recomputed in float64 for the selected pairs.
"""

from rra.knn.annoy_backend import RecallMissError, RecallMissWarning, knn_annoy, recall_at_k
from rra.knn.api import choose_backend, knn
from rra.knn.exact import knn_exact
from rra.knn.stage import build_graphs, load_graph, load_manifest

__all__ = ["RecallMissError", "RecallMissWarning", "build_graphs", "choose_backend", "knn",
           "knn_annoy", "knn_exact", "load_graph", "load_manifest", "recall_at_k"]
