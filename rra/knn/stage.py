"""The knn stage: one graph per embedding of an embed directory, and its readers.

Layout (docs/design.md, ``knn/{probe}/{distance}-{backend}/``):
``{hook}@{scale}.idx.npy`` (int32 n × k_max, sorted by (distance, index)), ``.dist.npy``
(float32), ``.json`` (sidecar), ``.annoy`` (annoy backend only), and ``manifest.json``, written
last: its presence means every graph listed is complete.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rra.io import (NpyRowWriter, load_npy, provenance, read_json, save_npy, sha256_artifact, sha256_file,
                    write_json)
from rra.knn.annoy_backend import ON_RECALL_MISS, RecallMissError
from rra.knn.annoy_backend import _check_recall_k as check_recall_k
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
                 backend: str, options: dict | None = None, nnts_k: Sequence[int] = (),
                 recall_k: Sequence[int] = (), progress: bool = True) -> dict:
    """Build the kNN graph of every embedding listed in ``embed_dir/manifest.json``.

    One graph per entry, in manifest order, one at a time (embeddings are memory-mapped).
    ``k`` is the stored k_max; ``options`` go to :func:`rra.knn.knn` (the backends' options).
    ``nnts_k``: k values above ``k`` at which NNTS is wanted: then every scale's embeddings go
    through one exact sweep (:func:`rra.knn.sweep.sweep`) that writes the same graphs and, per
    large k, the overlap counts of every hook pair (``overlaps@{scale}@k{k}.npy``, int32
    n × pairs, listed under ``overlaps`` in the manifest) instead of n × k graphs.
    ``recall_k``: the analysed k values ≤ ``k`` (default: ``k``): an Annoy graph's recall is
    measured at each on held-out rows and checked against its recall target
    (``options["on_recall_miss"]``: ``error``, the default, stops at the first graph that misses;
    ``warn`` keeps it with ``recall_target_met`` false); every graph records ``recall_at_k``.
    Returns the manifest written to ``out_dir/manifest.json``.
    """
    embed_dir, out_dir = Path(embed_dir), Path(out_dir)
    options, recall_k, nnts_k = _check_build_options(k, distance, backend, options, nnts_k,
                                                     recall_k)
    embed_manifest, entries = _embed_entries(embed_dir)
    config = {"k": k, "distance": distance, "backend": backend, "options": options,
              "recall_k": recall_k}
    if nnts_k:
        config["nnts_k"] = nnts_k
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # absent until every graph below is complete

    if nnts_k:
        graphs, overlaps = _sweep_graphs(embed_dir, out_dir, entries, k, nnts_k, distance,
                                         backend, config, recall_k, progress)
    else:
        graphs, overlaps = _graphs_one_by_one(embed_dir, out_dir, entries, k, distance, backend,
                                              options, config, recall_k, progress), []
    manifest = {
        "k_max": k, "distance": distance, "backend": backend, "options": options,
        "recall_k": recall_k, "entries": graphs, "nnts_k": nnts_k, "overlaps": overlaps,
        "hooks": embed_manifest.get("hooks", list(dict.fromkeys(g["hook"] for g in graphs))),
        "scales": embed_manifest.get("scales", list(dict.fromkeys(g["scale"] for g in graphs))),
        "embed_manifest": {"path": str(embed_dir / MANIFEST),
                           "sha256": sha256_artifact(embed_dir / MANIFEST)},
        "provenance": provenance(config, seed=options.get("seed")),
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def _check_build_options(k: int, distance: str, backend: str, options: dict | None,
                         nnts_k: Sequence[int], recall_k: Sequence[int]
                         ) -> tuple[dict, list[int], list[int]]:
    """:func:`build_graphs`' arguments checked: ``(options, recall_k, nnts_k)``, the last two
    sorted and distinct (recall_k with k)."""
    check_distance(distance)
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}: use one of {BACKENDS}")
    options = dict(options or {})
    for own in ("index_path", "name", "recall_k"):
        if own in options:
            raise ValueError(f"options must not set {own}: build_graphs sets it"
                             + (" from its recall_k argument" if own == "recall_k" else ""))
    if options.get("on_recall_miss", "error") not in ON_RECALL_MISS:
        raise ValueError(f"config key 'knn.on_recall_miss' must be one of {ON_RECALL_MISS}, got "
                         f"{options['on_recall_miss']!r}")
    recall_k = check_recall_k(list(recall_k) or None, k)
    nnts_k = sorted({int(v) for v in nnts_k})
    if nnts_k and backend == "annoy":
        raise ValueError(f"NNTS at k = {nnts_k} (above the stored k = {k}) is computed by the "
                         "exact sweep; use backend exact or auto")
    if nnts_k and nnts_k[0] <= k:
        raise ValueError(f"nnts_k {nnts_k} must all exceed the stored k = {k} (smaller k come "
                         "from the stored graphs)")
    return options, recall_k, nnts_k


def _load_embedding(embed_dir: Path, entry: dict) -> np.ndarray:
    emb_path = embed_dir / entry["file"]
    x = load_npy(emb_path, mmap=True)
    if list(x.shape) != [int(s) for s in entry["shape"]]:
        raise ValueError(f"{emb_path}: shape {list(x.shape)} differs from the embed "
                         f"manifest's {entry['shape']}")
    return x


def graph_files(hook: str, scale: str, annoy: bool = False) -> dict[str, str | None]:
    """File names of one graph in a knn directory."""
    stem = graph_stem(hook, scale)
    return {"idx": f"{stem}.idx.npy", "dist": f"{stem}.dist.npy", "json": f"{stem}.json",
            "annoy": f"{stem}.annoy" if annoy else None}


def _write_graph(out_dir: Path, emb_path: Path, hook: str, scale: str,
                 idx: np.ndarray | None, dist: np.ndarray | None, info: dict, seconds: float,
                 k: int, distance: str, backend: str, config: dict, seed: Any) -> dict:
    """Write one graph (indices, distances, sidecar; ``idx``/``dist`` ``None``: already written
    under :func:`graph_files`' names); return its manifest entry."""
    stem = graph_stem(hook, scale)
    annoy_path = out_dir / f"{stem}.annoy"
    if info["backend"] != "annoy":
        annoy_path.unlink(missing_ok=True)  # stale index of an earlier run
    files = graph_files(hook, scale, annoy=info["backend"] == "annoy")
    if idx is not None:
        save_npy(out_dir / files["idx"], idx)
        save_npy(out_dir / files["dist"], dist)
    emb_sha = sha256_file(emb_path)
    n, d = int(info["n"]), int(info["d"])
    write_json(out_dir / files["json"], {
        "hook": hook, "scale": scale, "n": n, "d": d, "k": k,
        "distance": distance, "backend": info["backend"], "backend_requested": backend,
        "backend_reason": info.get("backend_reason"),
        "predicted_seconds": info.get("predicted_seconds"),
        "info": info, "seconds": seconds, "files": files,
        "embedding": {"file": str(emb_path), "sha256": emb_sha},
        "provenance": provenance(config, seed=seed),
    })
    return {"hook": hook, "scale": scale, "n": n, "d": d,
            "backend": info["backend"], "backend_reason": info.get("backend_reason"),
            "predicted_seconds": info.get("predicted_seconds"), "recall": info["recall"],
            "recall_at_k": info["recall_at_k"], "recall_target": info.get("recall_target"),
            "recall_target_met": info["recall_target_met"],
            "search_k": info["search_k"], "seconds": seconds, "files": files,
            "embedding_sha256": emb_sha}


def _graphs_one_by_one(embed_dir: Path, out_dir: Path, entries: list[dict], k: int,
                       distance: str, backend: str, options: dict, config: dict,
                       recall_k: list[int], progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    graphs = []
    for entry in tqdm(entries, desc="kNN graphs", unit="graph", disable=None if progress else True):
        hook, scale = str(entry["hook"]), str(entry["scale"])
        stem = graph_stem(hook, scale)
        emb_path = embed_dir / entry["file"]
        x = _load_embedding(embed_dir, entry)
        t0 = time.perf_counter()
        try:
            idx, dist, info = knn(x, k, distance, backend, index_path=out_dir / f"{stem}.annoy",
                                  recall_k=recall_k,
                                  name=f"{emb_path} (hook {hook}, scale {scale})",
                                  **{"progress": progress, **options})
        except RecallMissError:  # its message names the file, hook and scale
            raise
        except ValueError as err:
            raise ValueError(f"{emb_path} ({stem}): {err}") from err
        info["n"], info["d"] = int(x.shape[0]), int(x.shape[1])
        graphs.append(_write_graph(out_dir, emb_path, hook, scale, idx, dist, info,
                                   time.perf_counter() - t0, k, distance, backend, config,
                                   options.get("seed")))
        del x
    return graphs


def _sweep_graphs(embed_dir: Path, out_dir: Path, entries: list[dict], k: int,
                  nnts_k: list[int], distance: str, backend: str, config: dict,
                  recall_k: list[int], progress: bool) -> tuple[list[dict], list[dict]]:
    """Graphs and large-k overlaps of every scale by :func:`rra.knn.sweep.sweep` (one pass per
    scale over all its hooks)."""
    from rra.knn.common import prepare_points
    from rra.knn.sweep import sweep

    graphs: dict[str, dict] = {}
    overlaps = []
    for scale in dict.fromkeys(str(e["scale"]) for e in entries):
        group = [e for e in entries if str(e["scale"]) == scale]
        names = [graph_stem(str(e["hook"]), scale) for e in group]
        points = []
        for entry, name in zip(group, names):
            try:
                points.append(prepare_points(_load_embedding(embed_dir, entry), distance, name))
            except ValueError as err:
                raise ValueError(f"{embed_dir / entry['file']} ({name}): {err}") from err
        writers = [tuple(NpyRowWriter(out_dir / graph_files(str(e["hook"]), scale)[part],
                                      (p.n, k), dtype) for part, dtype in
                         (("idx", np.int32), ("dist", np.float32)))
                   for e, p in zip(group, points)]
        try:
            res = sweep(points, k, nnts_k, progress=progress, names=names, writers=writers)
            for pair in writers:
                for writer in pair:
                    writer.close()
        except BaseException:
            for pair in writers:
                for writer in pair:
                    writer.abort()
            raise
        for entry, stats, p in zip(group, res.stats, points):
            info = {"backend": "exact", "recall": 1.0, "search_k": None, "n": p.n, "d": p.d,
                    "recall_at_k": {str(kk): 1.0 for kk in recall_k}, "recall_target_met": True,
                    "backend_reason": (f"{backend}: NNTS at k = {nnts_k} needs the exact sweep "
                                       "(every product of the probe rows)"), **stats}
            graphs[graph_stem(str(entry["hook"]), scale)] = _write_graph(
                out_dir, embed_dir / entry["file"], str(entry["hook"]), scale, None, None, info,
                stats["seconds"] / len(group), k, distance, backend, config, None)
        hooks = [str(e["hook"]) for e in group]
        for kk, counts in res.overlaps.items():
            name = f"overlaps@{scale}@k{kk}.npy"
            save_npy(out_dir / name, counts)
            overlaps.append({"scale": scale, "k": kk, "file": name, "hooks": hooks,
                             "pairs": [[hooks[a], hooks[b]] for a, b in res.pairs],
                             "sha256": sha256_file(out_dir / name)})
    order = [graph_stem(str(e["hook"]), str(e["scale"])) for e in entries]
    return [graphs[s] for s in order], overlaps


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
