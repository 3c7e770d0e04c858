"""Metric tables of one run, computed from its stored kNN graphs, as tidy polars frames.

One row per value. Every table has the columns of :data:`SCHEMA`; a column that does not apply
to a measure is null (``recall_target_met`` applies to the knn table only). ``hook_a``/``pos_a``
name a hook and its forward position (the order of
plot axes); ``scale_a``/``scale_b`` are pooled scales ("1", "2", "4", "full"); ``class_b`` is the
neighbours' class of the class-composition matrix; ``alpha`` the NNTP gap tolerance. The layer
analyses' tables (:mod:`rra.layers.stage`, same schema) use the last five columns: ``dx``, ``dy``
(a translation), ``radius`` (max(|dx|, |dy|) of a radial profile), ``quantile`` (of the hidden
margins) and ``pca_k`` (the PCA subspace of a constrained margin; D for the unconstrained one).
The representation dynamics table (E10, :mod:`rra.metrics.dynamics`) uses ``epoch`` and
``epoch_b``: the training epochs whose graphs are compared.

Uncertainty and chance (methods.md §4, :mod:`rra.metrics.intervals`): every value of a computed
table carries ``lo``, ``hi`` (bootstrap interval over probe rows), ``null`` (the value expected
under the row-shuffle null) and ``p`` (one-sided p-value of value > null); null where a measure
has no such notion (NNTP, ClassRepSim spread, class-response agreement: ``null``/``p``; CKA:
``lo``/``hi`` above ``intervals.CKA_MAX_ROWS`` rows) or ``metrics.bootstrap.B`` is 0. Sanity checks
(:mod:`rra.metrics.uncertainty`) run in every analysis and raise ``SanityError``.

Which measures: each table of measures (:data:`COMPUTED_TABLES`) holds the measures registered
for it (:data:`rra.metrics.registry.MEASURES`, ``Measure.table``), computed by the table's row
builder (:data:`ROW_BUILDERS`) through the registered functions; the ``knn`` table holds the
graphs' own facts.

Which hooks are compared: all hooks that have an embedding at a scale, in forward order, at that
scale (the `full` scale covers every hook). ClassRepSim compares the scales of one hook.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from rra.io import (PathLike, load_npy, provenance, read_json, sha256_artifact, write_json,
                    write_table)
from rra.metrics.intervals import (CkaBoot, RunUncertainty, class_response_stats,
                                   classrepsim_stats, cka_stats, nntp_stats, peer_scores,
                                   peer_stats)
from rra.metrics.registry import HELDOUT_KINDS, MEASURES, Measure, measures_in

SCHEMA: dict[str, str] = {
    "dataset": "str", "model": "str", "attention": "str", "augmentation": "str", "seed": "int",
    "probe": "str", "distance": "str", "backend": "str", "measure": "str",
    "hook_a": "str", "hook_b": "str", "pos_a": "int", "pos_b": "int",
    "scale_a": "str", "scale_b": "str", "k": "int", "alpha": "int",
    "class": "int", "class_b": "int", "value": "float", "recall_target_met": "bool",
    "dx": "int", "dy": "int", "radius": "int", "quantile": "float", "pca_k": "int",
    "epoch": "int", "epoch_b": "int",
    "lo": "float", "hi": "float", "null": "float", "p": "float",
}
#: the tables of measures, in registry order (one per ``Measure.table``), computed on request;
#: not the held-out placement's (E11), which its own stage writes from a second image set
COMPUTED_TABLES: tuple[str, ...] = tuple(dict.fromkeys(
    m.table for m in MEASURES.values() if m.kind not in HELDOUT_KINDS))
#: the placement stage's table (``{run}/placement/{reference}/{heldout}/{distance}/``, E11)
PLACEMENT_TABLE = "placement"
#: every table of a metrics folder: the tables of measures, then ``knn`` (always written)
TABLES: tuple[str, ...] = (*COMPUTED_TABLES, "knn")


def polars_schema() -> dict[str, Any]:
    import polars as pl

    types = {"str": pl.Utf8, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean}
    return {name: types[t] for name, t in SCHEMA.items()}


def frame(rows: Iterable[Mapping[str, Any]], constants: Mapping[str, Any]):
    """Rows (dicts with some of the columns) plus constant columns → a frame with SCHEMA.

    A key that is not a column of :data:`SCHEMA` is a ``ValueError`` naming it (it would
    otherwise be dropped without a word)."""
    import polars as pl

    data = [{**constants, **row} for row in rows]
    unknown = sorted(set(constants).union(*(row.keys() for row in data)) - set(SCHEMA))
    if unknown:
        raise ValueError(f"table rows have key(s) {unknown} that are not columns of "
                         f"rra.metrics.tables.SCHEMA; add them there or drop them")
    return pl.DataFrame(data, schema=polars_schema(), strict=False)


def scan_tables(paths: Iterable[PathLike]):
    """A lazy scan of tables written with :data:`SCHEMA` (or an older subset of it: the missing
    columns read as null), concatenated in the order given."""
    import polars as pl

    return pl.scan_parquet([Path(p) for p in paths], schema=polars_schema(),
                           missing_columns="insert")


class RunGraphs:
    """Access to one run's embeddings and stored graphs, by (hook, scale), in forward order."""

    def __init__(self, embed_dir: PathLike, knn_dir: PathLike):
        from rra.knn import load_graph

        self.embed_dir, self.knn_dir = Path(embed_dir), Path(knn_dir)
        self.embed = read_json(self.embed_dir / "manifest.json")
        self.knn = read_json(self.knn_dir / "manifest.json")
        self._load_graph = load_graph
        self.hooks: list[str] = list(self.embed["hooks"])
        self.pos = {h: i for i, h in enumerate(self.hooks)}
        self.entries = {(e["hook"], str(e["scale"])): e for e in self.embed["entries"]}
        self.scales: list[str] = [str(s) for s in self.embed["scales"]
                                  if any(sc == str(s) for _, sc in self.entries)]
        self.labels = load_npy(self.embed_dir / "labels.npy", mmap=False).astype(np.int64)
        self._check_rows()
        self.k_max = int(self.knn["k_max"])
        self.distance = self.knn["distance"]
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def _check_rows(self) -> None:
        """Sanity check: the labels, every embedding and every graph describe the probe's n
        rows (the embeddings' manifest ``n``)."""
        from rra.metrics.uncertainty import check_rows

        n = int(self.embed.get("n", self.labels.size))
        sizes = {"labels.npy": self.labels.size}
        sizes |= {f"embedding {h}@{s}": int(e["shape"][0]) for (h, s), e in self.entries.items()
                  if e.get("shape")}
        sizes |= {f"kNN graph {e['hook']}@{e['scale']}": int(e["n"])
                  for e in self.knn.get("entries", []) if "n" in e}
        check_rows(n, sizes, f"metrics of {self.knn_dir}")

    def hooks_at(self, scale: str) -> list[str]:
        return [h for h in self.hooks if (h, scale) in self.entries]

    def scales_of(self, hook: str) -> list[str]:
        return [s for s in self.scales if (hook, s) in self.entries]

    def graph(self, hook: str, scale: str) -> np.ndarray:
        key = (hook, scale)
        if key not in self._cache:
            from rra.metrics.uncertainty import check_rows

            idx, _ = self._load_graph(self.knn_dir, hook, scale)
            check_rows(self.labels.size, {f"kNN graph {hook}@{scale}": idx},
                       f"metrics of {self.knn_dir}")
            self._cache[key] = np.asarray(idx)
        return self._cache[key]

    def overlap_jaccard(self, scale: str, k: int, hooks: list[str]
                        ) -> Iterable[tuple[int, int, np.ndarray]]:
        """``(a, b, J)`` for every pair a < b of ``hooks`` at a k above the stored graphs' k_max,
        from the kNN sweep's overlap counts (``rra.knn.sweep``): J_i = m_i / (2k − m_i)."""
        from rra.knn.sweep import hook_pairs
        from rra.metrics.nnts import jaccard_from_overlap

        entry = next((o for o in self.knn.get("overlaps", [])
                      if str(o["scale"]) == scale and int(o["k"]) == k), None)
        if entry is None:
            raise ValueError(f"{self.knn_dir}: no NNTS overlaps at scale {scale!r} and k = {k} "
                             f"(graphs are stored up to k_max = {self.k_max}; the sweep computed "
                             f"k = {self.knn.get('nnts_k', [])})")
        counts = load_npy(self.knn_dir / entry["file"])
        column = {tuple(pair): p for p, pair in enumerate(entry["pairs"])}
        for a, b in hook_pairs(len(hooks)):
            p = column.get((hooks[a], hooks[b]))
            if p is None:
                raise ValueError(f"{self.knn_dir / entry['file']}: no column for the hooks "
                                 f"{hooks[a]!r}, {hooks[b]!r}")
            yield a, b, jaccard_from_overlap(counts[:, p], k)

    def embedding(self, hook: str, scale: str) -> np.ndarray:
        return load_npy(self.embed_dir / self.entries[(hook, scale)]["file"])


def _pairs(hooks: list[str], ordered: bool) -> Iterable[tuple[str, str]]:
    for i, a in enumerate(hooks):
        for b in hooks if ordered else hooks[i + 1:]:
            if a != b:
                yield a, b


@dataclass(frozen=True)
class TableArgs:
    """The k and α values a run's tables are computed at (checked by :func:`run_tables`).

    ks: every k asked (NNTS: also the swept k above the graphs' k_max); graph_ks: the k with
    stored graphs (every other table); nntp_ks: NNTP's k (among graph_ks); alphas: NNTP's α;
    unc: the uncertainty columns' shared state (:class:`rra.metrics.intervals.RunUncertainty`)."""

    ks: list[int]
    graph_ks: list[int]
    nntp_ks: list[int]
    alphas: list[int]
    #: the run's bootstrap and relabellings (None: ``lo``, ``hi``, ``null``, ``p`` stay null)
    unc: RunUncertainty | None = None
    #: seed of the sanity checks' shuffled-row control
    seed: int = 0


def nnts_rows(g: RunGraphs, measures: list[Measure], args: TableArgs) -> list[dict]:
    """NNTS for every hook pair at each scale and k, and its class-conditioned means, from one
    row-blocked pass over the (memory-mapped) graphs per (scale, k) — the registered ``nnts``
    for all pairs at once (``nnts.jaccard_rows_all_pairs``); above the graphs' k_max, from the
    kNN sweep's overlap counts (the same sets, without n × k graphs)."""
    from rra.metrics.nnts import jaccard_rows_all_pairs

    ks = args.ks
    rows: list[dict] = []
    for scale in g.scales:
        hooks = g.hooks_at(scale)
        graphs = [g.graph(h, scale) for h in hooks] if ks[0] <= g.k_max else []
        for k in ks:
            common = dict(scale_a=scale, scale_b=scale, k=k)
            if k <= g.k_max:
                _nnts_sanity(graphs, hooks, scale, k, args.seed, g.knn_dir)
            diagonal = args.unc.nnts_diagonal(k) if args.unc else {}
            for h in hooks:
                rows.append(dict(common, measure="nnts", hook_a=h, hook_b=h, pos_a=g.pos[h], pos_b=g.pos[h],
                                 value=1.0, **diagonal))
            pairs = (jaccard_rows_all_pairs(graphs, k, names=[f"{h}@{scale}" for h in hooks])
                     if k <= g.k_max else g.overlap_jaccard(scale, k, hooks))
            for a, b, j in pairs:
                rows += _nnts_pair_rows(g, common, hooks[a], hooks[b], j, args.unc)
    return rows


def _nnts_pair_rows(g: RunGraphs, common: dict, a: str, b: str, j: np.ndarray,
                    unc: RunUncertainty | None) -> list[dict]:
    """The rows of one hook pair (both ways): NNTS and its class means, with their
    uncertainty columns."""
    classes, inverse = np.unique(g.labels, return_inverse=True)
    per_class = np.bincount(inverse, weights=j) / np.bincount(inverse)
    overall, by_class = unc.nnts(j, common["k"]) if unc else ({}, [{}] * classes.size)
    rows = []
    for x, y in ((a, b), (b, a)):
        pair = dict(common, hook_a=x, hook_b=y, pos_a=g.pos[x], pos_b=g.pos[y])
        rows.append(dict(pair, measure="nnts", value=float(j.mean()), **overall))
        rows += [dict(pair, measure="nnts_class", **{"class": int(c)}, value=float(v), **st)
                 for c, v, st in zip(classes, per_class, by_class)]
    return rows


def _nnts_sanity(graphs: list[np.ndarray], hooks: list[str], scale: str, k: int, seed: int,
                 where: PathLike) -> None:
    """Sanity checks of every analysis: NNTS of each graph with itself is 1, and the first
    hook's graph against the last one's with shuffled rows is near chance."""
    from rra.metrics.uncertainty import check_self, check_shuffled, permutations

    for h, graph in zip(hooks, graphs):
        check_self(graph, k, f"{where}: nnts, hook {h!r} at scale {scale}, k = {k}")
    if len(graphs) >= 2:
        perm = permutations(graphs[0].shape[0], 1, seed)[0]
        check_shuffled(graphs[0], graphs[-1], k, perm,
                       f"{where}: nnts, hooks {hooks[0]!r} vs shuffled {hooks[-1]!r} at scale "
                       f"{scale}, k = {k}")


def nntp_rows(g: RunGraphs, measures: list[Measure], args: TableArgs) -> list[dict]:
    """The registered ``nntp`` of the chain of hooks at each scale, k of NNTP and α."""
    [measure] = measures
    rows: list[dict] = []
    for scale in g.scales:
        hooks = g.hooks_at(scale)
        if len(hooks) < 2:
            continue
        graphs = [g.graph(h, scale) for h in hooks]
        for k in args.nntp_ks:
            for alpha in args.alphas:
                res = measure.fn(graphs, k=k, alpha=alpha, rows=args.unc is not None)
                common = dict(scale_a=scale, scale_b=scale, k=k, alpha=alpha)
                L = len(hooks)
                table, edges, persistent = (nntp_stats(args.unc, res) if args.unc else
                                            ([[{}] * L] * L, [{}] * L, {}))
                for f, a in enumerate(hooks):
                    rows.append(dict(common, measure="nntp_edges", hook_a=a, pos_a=g.pos[a],
                                     value=float(res.edge_totals[f]), **edges[f]))
                    for l in range(f, len(hooks)):
                        b = hooks[l]
                        rows.append(dict(common, measure="nntp_runs", hook_a=a, hook_b=b, pos_a=g.pos[a],
                                         pos_b=g.pos[b], value=float(res.table[f, l]), **table[f][l]))
                rows.append(dict(common, measure="nntp_persistent_all", hook_a=hooks[0], hook_b=hooks[-1],
                                 pos_a=g.pos[hooks[0]], pos_b=g.pos[hooks[-1]], value=float(res.persistent_all),
                                 **persistent))
    return rows


def class_response_rows(g: RunGraphs, measures: list[Measure], args: TableArgs) -> list[dict]:
    """The registered ``class_response`` of every (hook, scale) graph at each stored k."""
    [measure] = measures
    rows: list[dict] = []
    for hook in g.hooks:
        for scale in g.scales_of(hook):
            for k in args.graph_ks:
                cr = measure.fn(g.graph(hook, scale), g.labels, k)
                common = dict(hook_a=hook, pos_a=g.pos[hook], scale_a=scale, k=k)
                st = class_response_stats(args.unc, cr) if args.unc else {}
                for i, c in enumerate(cr.classes):
                    for j, c2 in enumerate(cr.classes):
                        rows.append(dict(common, measure="class_composition", **{"class": int(c)},
                                         class_b=int(c2), value=float(cr.P[i, j]),
                                         **st.get(("class_composition", i, j), {})))
                    rows.append(dict(common, measure="knn_vote_accuracy_class", **{"class": int(c)},
                                     value=float(cr.vote_accuracy_per_class[i]),
                                     **st.get(("knn_vote_accuracy_class", i, None), {})))
                for name, value in (("knn_purity", cr.purity), ("knn_purity_rows", cr.row_weighted_purity),
                                    ("knn_vote_accuracy", cr.vote_accuracy)):
                    rows.append(dict(common, measure=name, value=value, **st.get((name, None, None), {})))
    return rows


def classrepsim_rows(g: RunGraphs, measures: list[Measure], args: TableArgs) -> list[dict]:
    """The registered ``classrepsim`` of every hook with two or more scales, at each stored k."""
    [measure] = measures
    rows: list[dict] = []
    for hook in g.hooks:
        scales = g.scales_of(hook)
        if len(scales) < 2:
            continue
        for k in args.graph_ks:
            res = measure.fn({s: g.graph(hook, s) for s in scales}, g.labels, k)
            st = classrepsim_stats(args.unc, res) if args.unc else {}
            for a, s in enumerate(res.scales):
                for b, t in enumerate(res.scales):
                    common = dict(hook_a=hook, hook_b=hook, pos_a=g.pos[hook], pos_b=g.pos[hook],
                                  scale_a=s, scale_b=t, k=k)
                    rows.append(dict(common, measure="classrepsim_mean", value=float(res.class_mean[a, b]),
                                     **st.get(("classrepsim_mean", a, b, None), {})))
                    rows.append(dict(common, measure="classrepsim_spread", value=float(res.class_spread[a, b]),
                                     **st.get(("classrepsim_spread", a, b, None), {})))
                    for i, c in enumerate(res.classes):
                        rows.append(dict(common, measure="classrepsim", **{"class": int(c)},
                                         value=float(res.S[i, a, b]), **st.get(("classrepsim", a, b, i), {})))
                        rows.append(dict(common, measure="class_response_agreement", **{"class": int(c)},
                                         value=float(res.agreement[i, a, b]),
                                         **st.get(("class_response_agreement", a, b, i), {})))
    return rows


def peer_rows(g: RunGraphs, measures: list[Measure], args: TableArgs) -> list[dict]:
    """kNN-based peer measures for every ordered hook pair at each scale and stored k.

    Symmetric measures (declared in the registry) are computed once per pair and stored both
    ways.
    """
    return _pair_rows(g, measures, args.graph_ks, args.unc)


def cka_rows(g: RunGraphs, measures: list[Measure] | None = None,
             args: TableArgs | None = None) -> list[dict]:
    """Linear CKA (biased and debiased; default: the measures registered for ``cka``) for every
    hook pair at each scale, stored both ways."""
    return _pair_rows(g, measures_in("cka") if measures is None else measures, [None],
                      args.unc if args is not None else None)


# Up to this many probe rows, measures that compare one embedding with all others (second-order
# cosine, CKA) use one n × n float64 matrix per hook of the current scale (134 MB each at n = 4096),
# computed once per (hook, scale) instead of once per pair.
DENSE_MAX_ROWS = 4096


class _DenseMatrices:
    """Per-hook n × n matrices of one scale, each built on first use and kept for the scale:
    pairwise distances (second-order cosine) and centred Gram statistics (CKA)."""

    def __init__(self, g: RunGraphs, scale: str):
        self.g, self.scale = g, scale
        self._dist: dict[str, np.ndarray] = {}
        self._gram: dict[str, Any] = {}

    def distances(self, hook: str) -> np.ndarray:
        from rra.metrics.peers import pairwise_distances

        if hook not in self._dist:
            self._dist[hook] = pairwise_distances(self.g.embedding(hook, self.scale), self.g.distance)
        return self._dist[hook]

    def gram(self, hook: str):
        from rra.metrics.cka import cka_gram

        if hook not in self._gram:
            self._gram[hook] = cka_gram(self.g.embedding(hook, self.scale), f"{hook}@{self.scale}")
        return self._gram[hook]


class _CkaSelf:
    """Per-hook (tr(K_c²), centred squared row norms) of one scale above ``DENSE_MAX_ROWS``, each
    computed on first use: CKA's exact chance level and p without an n × n matrix."""

    def __init__(self, g: RunGraphs, scale: str):
        self.g, self.scale = g, scale
        self._of: dict[str, tuple[float, np.ndarray]] = {}

    def of(self, hook: str) -> tuple[float, np.ndarray]:
        from rra.metrics.cka import cka_self_stats

        if hook not in self._of:
            self._of[hook] = cka_self_stats(self.g.embedding(hook, self.scale),
                                            f"{hook}@{self.scale}")
        return self._of[hook]

    def stats(self, a: str, b: str, debiased: bool, value: float) -> dict[str, Any]:
        (kk, na), (ll, nb) = self.of(a), self.of(b)
        return cka_stats(kk, na, ll, nb, debiased, value)


def _pair_value(g: RunGraphs, measure: Measure, scale: str, a: str, b: str, k: int | None,
                dense: _DenseMatrices | None) -> float:
    """One measure for hooks a, b at a scale; through per-hook dense matrices where available
    (same values up to rounding), else through the measure's registered function, called with
    the inputs of its ``kind``."""
    if dense is not None and measure.name == "second_order_cosine":
        from rra.metrics.peers import second_order_cosine_from_distances

        return second_order_cosine_from_distances(g.graph(a, scale), g.graph(b, scale),
                                                  dense.distances(a), dense.distances(b), k)
    if dense is not None and measure.table == "cka":
        from rra.metrics.cka import cka_from_stats

        return cka_from_stats(dense.gram(a), dense.gram(b), measure.name == "linear_cka_debiased")
    if measure.kind == "embeddings":
        return measure.fn(g.embedding(a, scale), g.embedding(b, scale))
    if measure.kind == "pair+embeddings":
        return measure.fn(g.graph(a, scale), g.graph(b, scale), g.embedding(a, scale),
                          g.embedding(b, scale), k, g.distance)
    return measure.fn(g.graph(a, scale), g.graph(b, scale), k)


def _pair_rows(g: RunGraphs, measures: list[Measure], ks: list[int | None],
               unc: RunUncertainty | None = None) -> list[dict]:
    rows: list[dict] = []
    for scale in g.scales:
        hooks = g.hooks_at(scale)
        dense = _DenseMatrices(g, scale) if len(g.labels) <= DENSE_MAX_ROWS else None
        cka_boot: CkaBoot | _CkaSelf | None = None
        if unc is not None:
            cka_boot = CkaBoot(unc) if dense is not None else _CkaSelf(g, scale)
        for a, b in _pairs(hooks, ordered=True):
            for measure in measures:
                if measure.symmetric and g.pos[a] > g.pos[b]:
                    continue
                for k in ks:
                    v, st = _pair_value_stats(g, measure, scale, a, b, k, dense, unc, cka_boot)
                    for x, y in ((a, b), (b, a)) if measure.symmetric else ((a, b),):
                        rows.append(dict(measure=measure.name, hook_a=x, hook_b=y, pos_a=g.pos[x],
                                         pos_b=g.pos[y], scale_a=scale, scale_b=scale, k=k, value=float(v),
                                         **st))
    return rows


def _pair_value_stats(g: RunGraphs, measure: Measure, scale: str, a: str, b: str, k: int | None,
                      dense: _DenseMatrices | None, unc: RunUncertainty | None,
                      cka_boot: CkaBoot | _CkaSelf | None) -> tuple[float, dict]:
    """One pair value and its uncertainty columns: kNN peers from their per-row scores (the
    value is their mean, as the registered function computes it), CKA from the Gram matrices
    (dense path) or from per-hook self traces (above it: chance level and p, no interval)."""
    if unc is None:
        return _pair_value(g, measure, scale, a, b, k, dense), {}
    if measure.table == "cka":
        v = _pair_value(g, measure, scale, a, b, k, dense)
        debiased = measure.name == "linear_cka_debiased"
        if isinstance(cka_boot, _CkaSelf):
            return v, cka_boot.stats(a, b, debiased, v)
        return v, cka_boot.stats(dense.gram(a), dense.gram(b), debiased, v)
    from rra.knn.sets import check_pair

    ga, gb = check_pair(g.graph(a, scale), g.graph(b, scale), k)
    dist = None
    if measure.name == "second_order_cosine" and dense is None:  # null from the embeddings
        from rra.metrics.peers import _second_order_cosine_rows

        xa, xb = g.embedding(a, scale), g.embedding(b, scale)
        scores = _second_order_cosine_rows(ga, gb, xa, xb, g.distance)
        value = float(scores.mean())
        return value, peer_stats(unc, measure.name, ga, gb, scores, value,
                                 emb=(xa, xb, g.distance))
    if measure.name == "second_order_cosine":
        dist = (dense.distances(a), dense.distances(b))
    scores = peer_scores(measure.name, ga, gb, dist)
    value = float(scores.mean())
    return value, peer_stats(unc, measure.name, ga, gb, scores, value, dist)


#: the row builder of each table of measures: ``builder(g, measures registered for the table,
#: args)``; the ``knn`` table holds the graphs' own facts (:func:`knn_rows`)
ROW_BUILDERS: dict[str, Callable[[RunGraphs, list[Measure], TableArgs], list[dict]]] = {
    "nnts": nnts_rows, "nntp": nntp_rows, "class_response": class_response_rows,
    "classrepsim": classrepsim_rows, "peers": peer_rows, "cka": cka_rows,
}


def table_rows(g: RunGraphs, table: str, args: TableArgs) -> list[dict]:
    """The rows of one table of a run: the registered measures of ``table`` through its row
    builder, or the graphs' facts for ``knn``."""
    if table == "knn":
        return knn_rows(g)
    return ROW_BUILDERS[table](g, measures_in(table), args)


def knn_rows(g: RunGraphs) -> list[dict]:
    """Per-graph kNN facts: the backend actually used (in ``backend``), its recall@k_max on the
    held-out rows and ``recall_target_met`` on every row (the graph's recall at every analysed k
    reached its target; True for exact graphs; null in kNN manifests older than the flag)."""
    rows = []
    for e in g.knn["entries"]:
        hook, scale = e["hook"], str(e["scale"])
        met = e.get("recall_target_met", True if e["backend"] == "exact" else None)
        common = dict(hook_a=hook, pos_a=g.pos[hook], scale_a=scale, k=g.k_max,
                      backend=e["backend"], recall_target_met=met)
        if e.get("recall") is not None:
            rows.append(dict(common, measure="knn_recall", value=float(e["recall"])))
        if e.get("search_k") is not None:
            rows.append(dict(common, measure="annoy_search_k", value=float(e["search_k"])))
    return rows


def run_tables(embed_dir: PathLike, knn_dir: PathLike, out_dir: PathLike, *, ks: list[int],
               alphas: list[int], run: Mapping[str, Any], tables: list[str] | None = None,
               nntp_ks: list[int] | None = None,
               bootstrap: Mapping[str, Any] | None = None) -> dict:
    """Compute the metric tables of one run and write them (Parquet, CSV when small).

    ``run`` holds the identity columns (dataset, model, attention, augmentation, seed, probe).
    ``ks``: each at most the graphs' stored k_max, or among the NNTS k of the kNN sweep
    (``knn/manifest.json`` ``nnts_k``): NNTS is computed at every k, the other tables at the
    k with stored graphs. ``tables``: which tables to compute (default all); the others are
    written empty, so every analysis folder has every table. ``nntp_ks``: the k values of NNTP
    (default: every k with stored graphs). ``bootstrap``: ``metrics.bootstrap`` (B, permutations,
    seed, level; default :class:`rra.metrics.uncertainty.Settings`; B = 0: the ``lo``, ``hi``,
    ``null``, ``p`` columns stay null). The manifest is written last.
    """
    from rra.metrics.uncertainty import Settings

    settings = Settings.of(bootstrap)
    g = RunGraphs(embed_dir, knn_dir)
    ks = sorted({int(k) for k in ks})
    swept = {int(k) for k in g.knn.get("nnts_k", [])}
    missing = [k for k in ks if k > g.k_max and k not in swept]
    if not ks or ks[0] < 1 or missing:
        raise ValueError(f"metrics: k values {ks} must be in [1, stored k_max = {g.k_max}] or "
                         f"among the NNTS k of the kNN sweep {sorted(swept)}; rebuild the kNN "
                         "graphs with a larger knn.k (or knn.store_k_max)")
    graph_ks = [k for k in ks if k <= g.k_max]
    alphas = sorted({int(a) for a in alphas})
    wanted = list(COMPUTED_TABLES) if tables is None else list(tables)
    unknown = sorted(set(wanted) - set(COMPUTED_TABLES))
    if unknown:
        raise ValueError(f"metrics: unknown table(s) {unknown}; known: {list(COMPUTED_TABLES)}")
    nntp_ks = graph_ks if not nntp_ks else sorted({int(k) for k in nntp_ks})
    if not set(nntp_ks) <= set(graph_ks):
        raise ValueError(f"metrics: NNTP k values {nntp_ks} must be among the k values with "
                         f"stored graphs {graph_ks}")
    args = TableArgs(ks=ks, graph_ks=graph_ks, nntp_ks=nntp_ks, alphas=alphas,
                     unc=RunUncertainty(g.labels, settings) if settings.enabled else None,
                     seed=settings.seed)
    constants = dict(run, distance=g.distance, backend=g.knn.get("backend", ""))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in TABLES:
        t0 = time.perf_counter()
        df = frame(table_rows(g, name, args) if name == "knn" or name in wanted else [], constants)
        written[name] = write_table(df, out / name) | {"seconds": round(time.perf_counter() - t0, 3)}
    manifest = dict(
        tables=written, ks=ks, alphas=alphas, nntp_ks=nntp_ks, graph_ks=graph_ks, computed=wanted + ["knn"],
        run=dict(run), k_max=g.k_max, distance=g.distance,
        embed_manifest_sha256=sha256_artifact(g.embed_dir / "manifest.json"),
        knn_manifest_sha256=sha256_artifact(g.knn_dir / "manifest.json"),
        bootstrap=dataclasses.asdict(settings),
        **provenance(config={"ks": ks, "alphas": alphas, "tables": wanted, "nntp_ks": nntp_ks,
                             "bootstrap": dataclasses.asdict(settings)}),
    )
    write_json(out / "manifest.json", manifest)
    return manifest


def load_tables(results_dir: PathLike = "results", name: str | None = None):
    """Every metric table of a study as one frame (or only table ``name``, e.g. "nnts"), the
    held-out placement tables (E11, ``placement``) included."""
    import polars as pl

    if name is not None and name not in (*TABLES, PLACEMENT_TABLE):
        raise ValueError(f"unknown table {name!r}; known: {[*TABLES, PLACEMENT_TABLE]}")
    pattern = f"{name}.parquet" if name else "*.parquet"
    files = sorted(p for p in Path(results_dir).glob(f"*/*/metrics/*/*/{pattern}"))
    if name in (None, PLACEMENT_TABLE):
        files += sorted(Path(results_dir).glob(f"*/*/placement/*/*/*/{PLACEMENT_TABLE}.parquet"))
    if not files:
        return pl.DataFrame(schema=polars_schema())
    return scan_tables(files).collect()
