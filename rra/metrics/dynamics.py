"""Representation dynamics (E10) [ours]: how each hook's kNN graph moves during training.

Input: the kNN graphs of the same hooks on the same probe rows at kept training epochs
e_1 < … < e_m, e_m the final epoch (the trained model; e = 0 may be the initialisation).
With K_h^e[i] the k neighbours of probe row i at hook h after epoch e and NNTS the mean Jaccard
of two graphs' neighbour sets (:func:`rra.metrics.nnts.nnts`, [source: Hryniowski & Wong]):

    D_h(e)         = NNTS(K_h^e, K_h^{e_m})          NNTS to the final model, measure
                                                     ``dynamics_nnts_final`` (D_h(e_m) = 1)
    S_h(e_j)       = NNTS(K_h^{e_{j-1}}, K_h^{e_j})  between consecutive kept epochs, measure
                                                     ``dynamics_nnts_step`` (j = 2 … m)
    settle_h(τ)    = min { e_j : D_h(e_l) ≥ τ for every l ≥ j }   measure
                                                     ``dynamics_settling_epoch``

The settling epoch is the first kept epoch from which the hook's neighbourhoods stay within τ
of the final ones; the final epoch always qualifies (D = 1), so a hook that never reaches τ
before the end settles at e_m (``settled_before_final`` false). "Stays" matters: a hook that
reaches τ, drops below and comes back settles at its return. D is compared with τ with a
1e-9 slack, so a mean of Jaccard indices that equals τ in exact arithmetic but rounds just
below it still counts.

Default τ = 0.5 [ours]: a row whose Jaccard is ½ shares two thirds of its k neighbours
(m/(2k − m) = ½ ⇔ m = 2k/3); NNTS ≥ ½ therefore says that, on average, the neighbourhoods
of the probe rows have settled to a majority of their final members. It is a threshold on an
absolute scale, so it reads the same for every hook and k (NNTS of two unrelated graphs is
about k/(2n), far below it). See docs/methods.md, "Representation dynamics (E10)".

Uncertainty (columns ``lo``, ``hi``, ``null``, ``p``; docs/methods.md §4; settings
``metrics.bootstrap``, B = 0: null) [ours], :func:`rra.metrics.intervals.dynamics_stats`: one
stratified row bootstrap of the probe rows (the probe's labels; without labels one stratum):

- ``dynamics_nnts_final`` and ``dynamics_nnts_step`` are NNTS of two graphs on the same probe
  rows, so they get exactly the metric tables' NNTS stats (resampled means of the per-row
  Jaccard; exact chance level of the row-shuffle null; p one-sided); D_h(e_m) (the final graph
  with itself) gets the diagonal's (lo = hi = 1);
- ``dynamics_settling_epoch``: in each resample b, D_h^b(e) = (W j_e)_b / n from the per-row
  Jaccard j_e of every kept epoch, and its settling epoch by the same rule; lo / hi are the
  lower (1 − level)/2 and the higher (1 + level)/2 quantile of the B settling epochs (numpy
  ``lower`` / ``higher``: always kept epochs); no ``null`` and no ``p``: a threshold crossing
  has no chance level;
- ``dynamics_settled_before_final``: lo / hi the same quantiles of the resampled indicator
  [settle < e_m] (lo = 1: settled before the end in all but a (1 − level)/2 share of the
  resamples; hi = 0: in almost none); no ``null``, ``p``.

Sanity checks (:mod:`rra.metrics.uncertainty`): the labels and every graph describe the same n
rows, the final graph's NNTS with itself is 1, and the first kept epoch's graph against the
final one relabelled by a seeded permutation lies near its chance level.

Rows are tidy, in :data:`rra.metrics.tables.SCHEMA`: ``hook_a``/``pos_a`` (and ``hook_b`` =
``hook_a``), ``scale_a``, ``k``, ``epoch`` (e) and ``epoch_b`` (the epoch compared with: the
final epoch, or for a step the later epoch), ``value``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rra.metrics.nnts import jaccard_per_row

#: default settling threshold τ on NNTS to the final epoch (module docstring)
TAU = 0.5
#: slack of the comparison D ≥ τ (rounding of a mean of rationals)
SLACK = 1e-9
MEASURES = ("dynamics_nnts_final", "dynamics_nnts_step", "dynamics_settling_epoch",
            "dynamics_settled_before_final")


def check_epochs(epochs: Iterable[int]) -> list[int]:
    """Kept epochs as a strictly increasing list of integers ≥ 0 (the last is the final one)."""
    out = []
    for e in epochs:
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0:
            raise ValueError(f"epochs: expected integers >= 0, got {e!r}")
        out.append(int(e))
    if not out:
        raise ValueError("epochs: need at least one epoch (the final one)")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"epochs: must be strictly increasing (the final epoch last), got {out}")
    return out


def settling_epoch(epochs: Sequence[int], to_final: Sequence[float], tau: float = TAU) -> int:
    """The first kept epoch e_j with D(e_l) ≥ τ for every l ≥ j (module docstring).

    ``to_final[j]`` = D(e_j), NNTS of epoch ``epochs[j]`` to the final epoch ``epochs[-1]``.
    The final epoch always qualifies, whatever its value (it is 1 by definition)."""
    epochs = check_epochs(epochs)
    if len(to_final) != len(epochs):
        raise ValueError(f"to_final: {len(to_final)} values for {len(epochs)} epochs")
    check_tau(tau)
    settled = epochs[-1]
    for e, d in zip(reversed(epochs[:-1]), reversed(list(to_final)[:-1])):
        if not d >= tau - SLACK:
            break
        settled = e
    return settled


def check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating)) \
            or not 0.0 <= float(tau) <= 1.0:
        raise ValueError(f"tau: the settling threshold must be a number in [0, 1], got {tau!r}")
    return float(tau)


def hook_dynamics(graph: Callable[[int], np.ndarray], epochs: Sequence[int], k: int,
                  tau: float = TAU, unc: Any = None, where: str = "dynamics") -> dict[str, Any]:
    """One hook at one k: ``{"to_final": [D(e_j)], "step": [S(e_j), j ≥ 2], "settling": e}``
    and, with ``unc`` (a :class:`rra.metrics.intervals.RunUncertainty` of the probe rows), their
    ``lo``, ``hi``, ``null``, ``p`` under ``"stats"``
    (:func:`rra.metrics.intervals.dynamics_stats`).

    ``graph(e)`` returns the hook's neighbour-index graph (n × k_max ≥ k) after epoch ``e``;
    each epoch's graph is read once and only the final one is held throughout. Sanity checks
    (:mod:`rra.metrics.uncertainty`): every graph has the probe's n rows (with ``unc``), the
    final graph's NNTS with itself is 1, and the first kept epoch's graph against the final one
    relabelled by a seeded row permutation is near its chance level."""
    from rra.metrics.uncertainty import check_rows, check_self, check_shuffled, permutations

    epochs = check_epochs(epochs)
    final = np.asarray(graph(epochs[-1]))
    if unc is not None:
        check_rows(unc.n, {f"the graph of epoch {epochs[-1]}": final}, where)
    check_self(final, k, f"{where}, epoch {epochs[-1]}")
    to_final, step, prev, rows_final, rows_step = [], [], None, [], []
    for i, e in enumerate(epochs):
        g = final if e == epochs[-1] else np.asarray(graph(e))
        if unc is not None:
            check_rows(unc.n, {f"the graph of epoch {e}": g}, where)
        if i == 0 and len(epochs) > 1:
            seed = unc.settings.seed if unc is not None else 0
            check_shuffled(g, final, k, permutations(final.shape[0], 1, seed)[0],
                           f"{where}: epoch {e} vs shuffled epoch {epochs[-1]}")
        j = jaccard_per_row(g, final, k)
        to_final.append(float(j.mean()))
        rows_final.append(j)
        if prev is not None:
            js = jaccard_per_row(prev, g, k)
            step.append(float(js.mean()))
            rows_step.append(js)
        prev = g
    out = {"to_final": to_final, "step": step,
           "settling": settling_epoch(epochs, to_final, tau)}
    if unc is not None:
        from rra.metrics.intervals import dynamics_stats

        out["stats"] = dynamics_stats(unc, epochs, rows_final, rows_step, k, tau, SLACK)
    return out


def dynamics_rows(graph: Callable[[int, str], np.ndarray], epochs: Sequence[int],
                  hooks: Sequence[str], ks: Iterable[int], *, tau: float = TAU,
                  scale: str = "full", positions: Mapping[str, int] | None = None,
                  unc: Any = None) -> list[dict[str, Any]]:
    """Tidy rows of every hook and k (module docstring): ``dynamics_nnts_final`` per kept
    epoch, ``dynamics_nnts_step`` per consecutive pair (``epoch`` the earlier, ``epoch_b`` the
    later), ``dynamics_settling_epoch`` (``epoch`` = ``value`` = the settling epoch) and
    ``dynamics_settled_before_final`` (1.0 when it is earlier than the final epoch, else 0.0).

    ``graph(e, hook)`` returns the graph of ``hook`` after epoch ``e``; all graphs must have the
    same rows (a ValueError otherwise, from :func:`rra.knn.sets.check_pair`). ``positions``:
    forward position of each hook (default: its index in ``hooks``). ``unc``: a
    :class:`rra.metrics.intervals.RunUncertainty` of the probe rows (their labels and
    ``metrics.bootstrap``) for the ``lo``, ``hi``, ``null``, ``p`` columns (None: null)."""
    epochs, tau = check_epochs(epochs), check_tau(tau)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"k: need positive neighbourhood sizes, got {ks}")
    pos = {h: i for i, h in enumerate(hooks)} if positions is None else dict(positions)
    final, rows = epochs[-1], []
    for hook in hooks:
        base = {"hook_a": hook, "hook_b": hook, "pos_a": pos[hook], "pos_b": pos[hook],
                "scale_a": str(scale), "scale_b": str(scale)}
        for k in ks:
            d = hook_dynamics(lambda e, h=hook: graph(e, h), epochs, k, tau, unc,
                              f"dynamics, hook {hook!r} at scale {scale}, k = {k}")
            st = d.get("stats") or {"to_final": [{}] * len(epochs),
                                    "step": [{}] * len(d["step"]), "settling": {},
                                    "settled": {}}
            at = {**base, "k": k}
            rows += [{**at, "measure": "dynamics_nnts_final", "epoch": e, "epoch_b": final,
                      "value": v, **s} for e, v, s in zip(epochs, d["to_final"], st["to_final"])]
            rows += [{**at, "measure": "dynamics_nnts_step", "epoch": a, "epoch_b": b,
                      "value": v, **s}
                     for a, b, v, s in zip(epochs, epochs[1:], d["step"], st["step"])]
            rows.append({**at, "measure": "dynamics_settling_epoch", "epoch": d["settling"],
                         "epoch_b": final, "value": float(d["settling"]), **st["settling"]})
            rows.append({**at, "measure": "dynamics_settled_before_final",
                         "epoch": d["settling"], "epoch_b": final,
                         "value": float(d["settling"] < final), **st["settled"]})
    return rows


def dynamics_frame(rows: Iterable[Mapping[str, Any]], run: Mapping[str, Any] | None = None):
    """:func:`dynamics_rows` as a polars frame with the columns of
    :data:`rra.metrics.tables.SCHEMA`; ``run`` adds the identity columns (dataset, model, …)."""
    from rra.metrics.tables import frame

    return frame(rows, dict(run or {}))


def dynamics_table(knn_dirs: Mapping[int, Any], out_dir: Any, *, ks: Iterable[int],
                   tau: float = TAU, scales: Iterable[str] = ("full",),
                   run: Mapping[str, Any] | None = None, labels: Any = None,
                   bootstrap: Any = None) -> dict[str, Any]:
    """The E10 stage: ``out_dir/dynamics.parquet`` (+ ``.csv``) from the kNN folders of one
    run's kept epochs, and ``out_dir/manifest.json`` last; returns the manifest.

    ``knn_dirs``: epoch → a folder of :func:`rra.knn.build_graphs` on the same probe rows (the
    largest epoch is the final one). Every hook of the final folder's manifest at each of
    ``scales`` is compared; each must have a graph there in every epoch's folder (else a
    ValueError naming the folder). ``ks`` ≤ every folder's k_max. The graphs are memory-mapped
    (:func:`rra.knn.load_graph`), one hook at a time.

    ``labels``: the probe rows' labels (an array or the path of a ``labels.npy``), the strata
    of the row bootstrap (None: one stratum, the rows resampled unstratified); ``bootstrap``:
    ``metrics.bootstrap`` (:class:`rra.metrics.uncertainty.Settings`; default B = 200; B = 0:
    the ``lo``, ``hi``, ``null``, ``p`` columns stay null)."""
    import dataclasses
    import time
    from pathlib import Path

    from rra.io import provenance, read_json, sha256_artifact, write_json, write_table
    from rra.knn import load_graph

    t0 = time.perf_counter()
    dirs = {int(e): Path(d) for e, d in knn_dirs.items()}
    epochs, tau = check_epochs(sorted(dirs)), check_tau(tau)
    ks = sorted({int(k) for k in ks})
    manifests = {e: read_json(dirs[e] / "manifest.json") for e in epochs}
    final = manifests[epochs[-1]]
    hooks = [str(h) for h in final["hooks"]]
    unc, settings = _uncertainty(final, labels, bootstrap, dirs[epochs[-1]])
    rows = []
    for scale in [str(s) for s in scales]:
        at = [h for h in hooks if _has_graph(final, h, scale)]
        for e in epochs:
            missing = [h for h in at if not _has_graph(manifests[e], h, scale)]
            if missing or int(manifests[e]["k_max"]) < ks[-1]:
                raise ValueError(f"{dirs[e]}: epoch {e} lacks graphs of hooks {missing} at scale "
                                 f"{scale!r} or k_max {manifests[e]['k_max']} < k = {ks[-1]}")
        rows += dynamics_rows(lambda e, h, s=scale: load_graph(dirs[e], h, s)[0], epochs, at, ks,
                              tau=tau, scale=scale, positions={h: i for i, h in enumerate(hooks)},
                              unc=unc)
    constants = dict(run or {}, distance=final.get("distance"), backend=final.get("backend"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = write_table(dynamics_frame(rows, constants), out / "dynamics")
    manifest = {"table": facts, "epochs": epochs, "tau": tau, "ks": ks,
                "scales": [str(s) for s in scales], "run": dict(run or {}),
                "bootstrap": dataclasses.asdict(settings), "stratified": labels is not None,
                "knn": {str(e): {"path": str(dirs[e]),
                                 "sha256": sha256_artifact(dirs[e] / "manifest.json")}
                        for e in epochs},
                "seconds": round(time.perf_counter() - t0, 3),
                **provenance(config={"epochs": epochs, "tau": tau, "ks": ks,
                                     "scales": [str(s) for s in scales],
                                     "bootstrap": dataclasses.asdict(settings)})}
    write_json(out / "manifest.json", manifest)
    return manifest


def _uncertainty(final: Mapping[str, Any], labels: Any, bootstrap: Any, where: Any):
    """(:class:`rra.metrics.intervals.RunUncertainty` or None when B = 0, settings) of the
    probe rows of the final epoch's kNN folder: labels from an array or a ``labels.npy`` path,
    checked against the folder's graphs' n (sanity check); without labels one stratum."""
    from rra.metrics.intervals import RunUncertainty
    from rra.metrics.uncertainty import Settings, check_rows

    settings = Settings.of(bootstrap)
    if not settings.enabled:
        return None, settings
    n = next((int(e["n"]) for e in final.get("entries", []) if "n" in e), None)
    if labels is None:
        if n is None:
            raise ValueError(f"{where}: the kNN manifest names no row count n; pass the probe's "
                             "labels for the bootstrap")
        y = np.zeros(n, dtype=np.int64)
    else:
        if isinstance(labels, (str, bytes)) or hasattr(labels, "__fspath__"):
            from rra.io import load_npy

            labels = load_npy(labels, mmap=False)
        y = np.asarray(labels).astype(np.int64)
        if n is not None:
            check_rows(n, {"the labels": y}, f"dynamics of {where}")
    return RunUncertainty(y, settings), settings


def _has_graph(manifest: Mapping[str, Any], hook: str, scale: str) -> bool:
    return any(str(g["hook"]) == hook and str(g["scale"]) == scale for g in manifest["entries"])
