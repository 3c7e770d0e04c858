"""The knn stage: one graph per embedding of an embed directory, and its readers.

Layout (docs/design.md, ``knn/{probe}/{distance}-{backend}/``):
``{hook}@{scale}.idx.npy`` (int32 n × k_max, sorted by (distance, index)), ``.dist.npy``
(float32), ``.json`` (sidecar), ``.annoy`` (annoy backend only), and ``manifest.json``, written
last: its presence means every graph listed is complete.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from rra.io import load_npy, provenance, read_json, save_npy, sha256_file, write_json
from rra.knn.api import BACKENDS, knn
from rra.knn.common import check_distance

MANIFEST = "manifest.json"


def graph_stem(hook: str, scale: Any) -> str:
    return f"{hook}@{scale}"


def _embed_entries(embed_dir: Path) -> tuple[dict, list[dict]]:
    manifest = read_json(embed_dir / MANIFEST)
    entries = manifest.get("entries") if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{embed_dir / MANIFEST}: expected a non-empty list under 'entries'")
    for pos, entry in enumerate(entries):
        missing = [key for key in ("hook", "scale", "file", "shape") if key not in entry]
        if missing:
            raise ValueError(f"{embed_dir / MANIFEST}: entry {pos} lacks {missing}")
    return manifest, entries


def build_graphs(embed_dir: str | Path, out_dir: str | Path, *, k: int, distance: str,
                 backend: str, options: dict | None = None, progress: bool = True) -> dict:
    """Build the kNN graph of every embedding listed in ``embed_dir/manifest.json``.

    One graph per entry, in manifest order, one at a time (embeddings are memory-mapped).
    ``k`` is the stored k_max; ``options`` go to :func:`rra.knn.knn` (``exact_budget`` and the
    backends' options). Returns the manifest written to ``out_dir/manifest.json``.
    """
    from tqdm.auto import tqdm

    embed_dir, out_dir = Path(embed_dir), Path(out_dir)
    check_distance(distance)
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}: use one of {BACKENDS}")
    options = dict(options or {})
    if "index_path" in options:
        raise ValueError("options must not set index_path: build_graphs names the index files")
    embed_manifest, entries = _embed_entries(embed_dir)
    config = {"k": k, "distance": distance, "backend": backend, "options": options}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # absent until every graph below is complete

    graphs = []
    for entry in tqdm(entries, desc="kNN graphs", unit="graph", disable=None if progress else True):
        hook, scale = str(entry["hook"]), str(entry["scale"])
        stem = graph_stem(hook, scale)
        emb_path = embed_dir / entry["file"]
        x = load_npy(emb_path, mmap=True)
        if list(x.shape) != [int(s) for s in entry["shape"]]:
            raise ValueError(f"{emb_path}: shape {list(x.shape)} differs from the embed "
                             f"manifest's {entry['shape']}")
        annoy_path = out_dir / f"{stem}.annoy"
        t0 = time.perf_counter()
        try:
            idx, dist, info = knn(x, k, distance, backend, index_path=annoy_path,
                                  **{"progress": progress, **options})
        except ValueError as err:
            raise ValueError(f"{emb_path} ({stem}): {err}") from err
        seconds = time.perf_counter() - t0
        if info["backend"] != "annoy":
            annoy_path.unlink(missing_ok=True)  # stale index of an earlier run
        files = {"idx": f"{stem}.idx.npy", "dist": f"{stem}.dist.npy", "json": f"{stem}.json",
                 "annoy": annoy_path.name if info["backend"] == "annoy" else None}
        save_npy(out_dir / files["idx"], idx)
        save_npy(out_dir / files["dist"], dist)
        emb_sha = sha256_file(emb_path)
        write_json(out_dir / files["json"], {
            "hook": hook, "scale": scale, "n": int(x.shape[0]), "d": int(x.shape[1]), "k": k,
            "distance": distance, "backend": info["backend"], "backend_requested": backend,
            "info": info, "seconds": seconds, "files": files,
            "embedding": {"file": str(emb_path), "sha256": emb_sha},
            "provenance": provenance(config, seed=options.get("seed")),
        })
        graphs.append({"hook": hook, "scale": scale, "n": int(x.shape[0]), "d": int(x.shape[1]),
                       "backend": info["backend"], "recall": info["recall"],
                       "search_k": info["search_k"], "seconds": seconds, "files": files,
                       "embedding_sha256": emb_sha})
        del x

    manifest = {
        "k_max": k, "distance": distance, "backend": backend, "options": options,
        "entries": graphs,
        "hooks": embed_manifest.get("hooks", list(dict.fromkeys(g["hook"] for g in graphs))),
        "scales": embed_manifest.get("scales", list(dict.fromkeys(g["scale"] for g in graphs))),
        "embed_manifest": {"path": str(embed_dir / MANIFEST),
                           "sha256": sha256_file(embed_dir / MANIFEST)},
        "provenance": provenance(config, seed=options.get("seed")),
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def load_manifest(knn_dir: str | Path) -> dict:
    """The manifest of a knn directory (``FileNotFoundError`` if the stage has not finished)."""
    path = Path(knn_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"missing kNN manifest {path}: build_graphs has not completed "
                                "for this directory")
    return read_json(path)


def load_graph(knn_dir: str | Path, hook: str, scale: Any,
               k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(idx int32 n × k, dist float32 n × k)`` of one graph: the first k columns of the stored
    k_max (neighbour lists are prefixes); ``k=None`` gives all k_max columns."""
    knn_dir = Path(knn_dir)
    manifest = load_manifest(knn_dir)
    k_max = int(manifest["k_max"])
    stem = graph_stem(hook, scale)
    entry = next((e for e in manifest["entries"] if graph_stem(e["hook"], e["scale"]) == stem),
                 None)
    if entry is None:
        available = ", ".join(graph_stem(e["hook"], e["scale"]) for e in manifest["entries"])
        raise ValueError(f"{knn_dir}: no graph for hook {hook!r} at scale {scale!r}; "
                         f"available: {available}")
    if k is None:
        k = k_max
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= k_max:
        raise ValueError(f"{knn_dir}/{stem}: k must be an integer in [1, k_max = {k_max}], "
                         f"got {k!r}")
    idx = load_npy(knn_dir / entry["files"]["idx"], mmap=True)
    dist = load_npy(knn_dir / entry["files"]["dist"], mmap=True)
    expected = (int(entry["n"]), k_max)
    for name, arr in (("idx", idx), ("dist", dist)):
        if arr.shape != expected:
            raise ValueError(f"{knn_dir / entry['files'][name]}: shape {arr.shape}, expected "
                             f"{expected} from the manifest")
    return np.array(idx[:, :k]), np.array(dist[:, :k])
