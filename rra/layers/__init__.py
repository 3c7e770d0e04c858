"""Per-layer analyses of a trained model beside RRA (seed-measures.md, experiments E7–E9):
pure functions of (model, probe, hooks) that return tidy rows in the columns of
``rra.metrics.tables.SCHEMA`` (``dx``, ``dy``, ``radius``, ``quantile``, ``pca_k`` among them).
Shared plumbing: :mod:`rra.layers.common`; the workflow stage: :mod:`rra.layers.stage`."""

from rra.layers.patterns import (activation_patterns, check_relu_hooks, pattern_groups,
                                 pattern_purity, relu_codes, relu_hooks)
from rra.layers.translation import (black_fill, shift_grid, shift_stack,
                                    translation_sensitivity)
from rra.layers.fragmentation import (Fragmentation, count_regions, draw_triplets,
                                      fragmentation, fragmentation_rows, head_logits,
                                      plane_coordinates)
from rra.layers.margins import (DeepFoolResult, HiddenMargins, deepfool, hidden_margin_rows,
                                hidden_margins, input_margin_rows, pca_basis)
from rra.layers.saliency import (Saliency, filter_grid, first_layer_filters,
                                 mean_activation_maps, saliency_maps, saliency_rows, top_share)
