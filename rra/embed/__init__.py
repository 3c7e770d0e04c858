"""rra.embed: per-layer embeddings of a probe set, streamed to one .npy per (hook, scale).

- :func:`pool_embedding`, :func:`scales_for`, :func:`parse_scales` — the scales of one output
  (methods.md §1, [ours]);
- :func:`dump_embeddings` — the Python API (any model, hooks, images or DataLoader); the
  reserved hook :data:`INPUT_HOOK` (``"input"``, first) embeds the model's normalised input;
- :func:`embed_run` — the stage entry (``python -m rra embed``).

Torch is imported inside the functions that need it, so importing this package stays light.
"""

from rra.embed.dump import INPUT_HOOK, MANIFEST, dump_embeddings, embedding_stem
from rra.embed.pool import FULL, parse_scale, parse_scales, pool_embedding, scale_name, scales_for
from rra.embed.stage import ProbeRows, embed_run, load_probe

__all__ = ["FULL", "INPUT_HOOK", "MANIFEST", "ProbeRows", "dump_embeddings", "embed_run",
           "embedding_stem", "load_probe", "parse_scale", "parse_scales", "pool_embedding",
           "scale_name", "scales_for"]
