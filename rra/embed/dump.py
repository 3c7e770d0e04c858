"""Stream per-layer embeddings of a probe set to disk, one ``.npy`` per (hook, scale).

Memory: each batch's hook outputs are pooled inside the forward hook and appended to one
``rra.io.NpyRowWriter`` per (hook, scale), so the process holds the model, one batch of
activations and the writers' buffers — never an n-sized array (methods.md §2).

The input hook: the reserved hook name ``input`` (:data:`INPUT_HOOK`) stands for the model's
input itself — the float batch ``x`` that ``model(x)`` receives, i.e. the image after
``transform`` (normalisation) — treated like any hook output: pooled to each scale by
:func:`rra.embed.pool.pool_embedding` (an N×C×H×W input has scales 1, 2, 4, … and ``full``
like any feature map), checked for NaN/inf and streamed to ``input@{scale}.npy``. It is
captured before the forward pass (so no in-place op of the model can alter it) and, when
requested, must be the first hook (forward position 0). [source: the chain of hook points
starts at the input image I; ours: the normalised input, pooled like any map]
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from rra.device import pick_device
from rra.embed.pool import FULL, Scale, parse_scales, pool_embedding, scale_name, scales_for
from rra.io import NpyRowWriter, PathLike, provenance, write_json

if TYPE_CHECKING:
    import torch
    from torch import nn

MANIFEST = "manifest.json"
#: reserved hook name of the model's (normalised) input; always forward position 0
INPUT_HOOK = "input"
# keys written by dump_embeddings itself; ``meta`` may not override them
_RESERVED = frozenset({"hook", "scale", "file", "shape", "dtype", "hooks", "scales", "entries",
                       "n", "batch_size", "device", "versions"})


def embedding_stem(hook: str, scale: Scale) -> str:
    """File stem of one embedding: ``{hook}@{scale}`` (``layer1.2@4``, ``fc@full``)."""
    return f"{hook}@{scale_name(scale)}"


def dump_embeddings(model: "nn.Module", images: Any, hooks: Sequence[str], scales: Iterable[object],
                    out_dir: PathLike, *, batch_size: int = 256, device: str = "auto",
                    transform: Callable[[Any], Any] | None = None, meta: dict | None = None,
                    progress: bool = True) -> dict:
    """Write the embedding of every (hook, scale) for the rows of ``images``; return the manifest.

    ``images``: an indexable array with ``len`` and slicing (a uint8 N×H×W×C memory map already
    restricted to the probe rows, a float N×C×H×W tensor, …), read ``batch_size`` rows at a
    time; or a ``DataLoader`` (any iterable with a sized ``.dataset``) yielding ``x`` or
    ``(x, y, …)`` batches in a fixed order (no shuffling, no ``drop_last``; its own batch size is
    used). ``transform`` maps one batch to the model's float input (e.g. ``rra.data.normalise``);
    without it the batch must already be floating point.

    ``hooks``: module names (``model.get_submodule``) in forward call order; every hook must be
    called exactly once per forward pass, checked with a dry forward on the first sample, which
    also fixes each embedding's width d (see :func:`rra.embed.pool.scales_for` for which scales
    apply to which output). The reserved name ``"input"`` (:data:`INPUT_HOOK`), allowed only
    first, embeds the model's input batch itself (what ``model(x)`` receives, after
    ``transform``), pooled like any map; a model with a submodule named ``input`` cannot use it
    (ambiguous: ``ValueError``). The model is put in eval mode (restored afterwards), moved to
    ``device`` and run under ``torch.inference_mode()``.

    Writes ``out_dir/{hook}@{scale}.npy`` (float32, n × d, row i = input row i) with a sidecar
    ``{hook}@{scale}.json`` (shape, dtype, hook, scale, ``meta``, provenance), and then, last,
    ``out_dir/manifest.json``: hooks (forward order), scales, entries (ordered by hook, then
    scale coarse to fine, ``full`` last), n, ``meta`` and provenance. A stale manifest is
    removed first, so a manifest is present only after a complete dump. On any error (NaN/inf
    in an output, wrong row count, …) every writer is aborted: no partial file appears under a
    final name.
    """
    scale_list = parse_scales(scales)
    hook_list = _check_hooks(model, hooks)
    meta = _check_meta(meta)
    batch_size = _check_batch_size(batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    dev = pick_device(device)
    n, n_batches, batches = _batches(images, batch_size, transform)

    was_training = model.training
    model.eval()
    model.to(dev)
    try:
        writers = _stream(model, hook_list, scale_list, batches, n, n_batches, out_dir, dev,
                          progress)
    finally:
        model.train(was_training)
    if _is_loader(images):
        batch_size = getattr(images, "batch_size", None)
    return _write_records(out_dir, writers, hook_list, scale_list, n, meta, batch_size, dev)


def _stream(model: "nn.Module", hooks: list[str], scales: list[Scale], batches: Iterator,
            n: int, n_batches: int | None, out_dir: Path, dev: "torch.device", progress: bool
            ) -> dict[tuple[str, Scale], NpyRowWriter]:
    """Steps of :func:`dump_embeddings` under ``torch.inference_mode()``: a dry forward of the
    first sample fixes the hooks' shapes and the (hook, scale) plan, one writer per embedding
    is opened, every batch is run through the model with the sink's hooks, and the writers are
    closed once every embedding has ``n`` rows. On any error every writer is aborted."""
    import torch

    modules = {h: model.get_submodule(h) for h in hooks if h != INPUT_HOOK}
    sink = _Sink()
    try:
        with torch.inference_mode():
            batch_iter = iter(batches)
            first = next(batch_iter, None)
            if first is None:
                raise ValueError("no input batches: the image source is empty")
            shapes = _dry_forward(model, modules, hooks, first[:1].to(dev))
            plan = _plan(shapes, scales)
            _open_writers(sink.writers, plan, shapes, out_dir, n)
            _forward_batches(model, modules, sink, plan, itertools.chain([first], batch_iter),
                             n_batches, dev, progress)
        _close_writers(sink.writers, n)
    except BaseException:
        for writer in sink.writers.values():
            writer.abort()
        raise
    return sink.writers


def _open_writers(writers: dict[tuple[str, Scale], NpyRowWriter],
                  plan: dict[str, list[Scale]], shapes: dict[str, tuple[int, ...]],
                  out_dir: Path, n: int) -> None:
    """Add one n × d float32 row writer per (hook, scale) of the plan to ``writers`` (each as
    it opens, so an error aborts the ones opened before), d from the hook's shape."""
    for hook, hook_scales in plan.items():
        for scale in hook_scales:
            width = int(np.prod(_row_shape(shapes[hook], scale)))
            path = out_dir / f"{embedding_stem(hook, scale)}.npy"
            writers[(hook, scale)] = NpyRowWriter(path, (n, width), np.float32)


def _forward_batches(model: "nn.Module", modules: dict, sink: "_Sink",
                     plan: dict[str, list[Scale]], batches: Iterable["torch.Tensor"],
                     n_batches: int | None, dev: "torch.device", progress: bool) -> None:
    """Run every batch through the model with the sink's forward hooks on the modules; the
    input hook's batch is stored before the forward pass."""
    from tqdm import tqdm

    handles = [modules[h].register_forward_hook(sink.hook(h, plan[h])) for h in modules]
    try:
        bar = tqdm(batches, total=n_batches, unit="batch", desc=f"embed {len(sink.writers)} arrays",
                   disable=None if progress else True)
        for x in bar:
            x = x.to(dev)
            sink.begin(x.shape[0])
            if INPUT_HOOK in plan:  # the model's input, stored before the forward pass
                sink.store(INPUT_HOOK, plan[INPUT_HOOK], x)
            model(x)
            sink.end()
    finally:
        for handle in handles:
            handle.remove()


def _close_writers(writers: dict[tuple[str, Scale], NpyRowWriter], n: int) -> None:
    """Close every writer (its file appears under its final name) once all hold ``n`` rows."""
    short = {embedding_stem(h, s): w.rows for (h, s), w in writers.items() if w.rows != n}
    if short:
        raise ValueError(f"expected {n} rows per embedding, got {short}: the input yielded "
                         "a different number of rows than its length")
    for writer in writers.values():
        writer.close()


def _write_records(out_dir: Path, writers: dict[tuple[str, Scale], NpyRowWriter],
                   hooks: list[str], scales: list[Scale], n: int, meta: dict,
                   batch_size: int | None, dev: "torch.device") -> dict:
    """Write each embedding's sidecar JSON and then, last, the manifest; return the manifest."""
    record = {**meta, **provenance()}
    entries = []
    for (hook, scale), writer in writers.items():
        stem = embedding_stem(hook, scale)
        entry = {"hook": hook, "scale": scale_name(scale), "file": f"{stem}.npy",
                 "shape": list(writer.shape)}
        write_json(out_dir / f"{stem}.json", {**entry, "dtype": "float32", **record})
        entries.append(entry)
    manifest = {"hooks": hooks, "scales": [scale_name(s) for s in scales],
                "entries": entries, "n": n, "dtype": "float32", "batch_size": batch_size,
                "device": str(dev), **record}
    write_json(out_dir / MANIFEST, manifest)
    return manifest


class _Sink:
    """Forward hooks that pool each output and append it to the writers, one batch at a time."""

    def __init__(self) -> None:
        self.writers: dict[tuple[str, Scale], NpyRowWriter] = {}
        self.offset = 0  # rows written before the current batch
        self.batch = 0   # rows in the current batch

    def begin(self, batch_rows: int) -> None:
        self.batch = int(batch_rows)

    def end(self) -> None:
        self.offset += self.batch

    def hook(self, name: str, scales: list[Scale]) -> Callable:
        def write(module: Any, inputs: Any, output: Any) -> None:
            self.store(name, scales, output)

        return write

    def store(self, name: str, scales: list[Scale], output: Any) -> None:
        """Pool one batch's ``output`` of hook ``name`` to each scale and append it."""
        import torch

        rows = f"rows {self.offset}..{self.offset + self.batch - 1}"
        if not isinstance(output, torch.Tensor) or output.shape[0] != self.batch:
            got = (tuple(output.shape) if isinstance(output, torch.Tensor)
                   else type(output).__name__)
            raise ValueError(f"hook {name!r}: expected an output with {self.batch} rows for "
                             f"{rows}, got {got}")
        for scale in scales:
            emb = pool_embedding(output, scale)
            if not _all_finite(emb):
                raise ValueError(f"hook {name!r} (scale {scale_name(scale)}): NaN or inf in "
                                 f"the embedding of probe {rows}")
            # written at once: a later in-place op cannot change what is stored
            self.writers[(name, scale)].write(emb.cpu().numpy())


def _all_finite(t: "torch.Tensor") -> bool:
    """True iff no NaN/inf in ``t``: a NaN or inf makes the sum non-finite, so the exact
    element-wise check runs only when the (fast) sum is not finite, e.g. on overflow."""
    import torch

    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _dry_forward(model: "nn.Module", modules: dict, hooks: list[str], x: "torch.Tensor") -> dict:
    """Run one sample; return each hook's output shape (``input``: the input's shape, first);
    check each module hook fires once, in order."""
    import torch

    calls: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    if hooks[0] == INPUT_HOOK:
        shapes[INPUT_HOOK] = tuple(x.shape)
        hooks = hooks[1:]

    def recorder(name: str) -> Callable:
        def record(module: Any, inputs: Any, output: Any) -> None:
            calls.append(name)
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"hook {name!r}: module output is a {type(output).__name__}, "
                                 "not a tensor; hook a module that returns one tensor")
            shapes[name] = tuple(output.shape)
        return record

    handles = [modules[h].register_forward_hook(recorder(h)) for h in hooks]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [h for h in hooks if h not in calls]
    if missing:
        raise ValueError(f"hook(s) {missing} were not called in the forward pass")
    repeated = sorted({h for h in calls if calls.count(h) > 1})
    if repeated:
        raise ValueError(f"hook(s) {repeated} were called more than once per forward pass "
                         "(a reused module): their output is ambiguous, hook a unique module")
    if calls != hooks:
        raise ValueError(f"hooks are not in forward call order: given {hooks}, "
                         f"the forward pass calls them as {calls}")
    return shapes


def _plan(shapes: dict[str, tuple[int, ...]], scales: list[Scale]) -> dict[str, list[Scale]]:
    plan = {}
    for hook, shape in shapes.items():
        try:
            plan[hook] = scales_for(shape, scales)
        except ValueError as err:
            raise ValueError(f"hook {hook!r}: {err}") from err
        if not plan[hook]:
            raise ValueError(f"hook {hook!r} (output shape {shape[1:]} per image) yields no "
                             f"embedding at scales {[scale_name(s) for s in scales]}: add 'full' "
                             "or a scale no larger than the map")
    return plan


def _row_shape(shape: tuple[int, ...], scale: Scale) -> tuple[int, ...]:
    if scale == FULL:
        return shape[1:]
    return (shape[1], int(scale), int(scale))


def _check_hooks(model: "nn.Module", hooks: Sequence[str]) -> list[str]:
    if isinstance(hooks, str):
        hooks = [hooks]
    hooks = list(hooks)
    if not hooks:
        raise ValueError("no hooks given: name at least one module (see model.hook_names)")
    bad = [h for h in hooks if not isinstance(h, str) or not h]
    if bad:
        raise ValueError(f"invalid hook name(s) {bad}: hooks are non-empty module names")
    repeated = sorted({h for h in hooks if hooks.count(h) > 1})
    if repeated:
        raise ValueError(f"hook(s) {repeated} given more than once")
    available = [name for name, _ in model.named_modules() if name]
    if INPUT_HOOK in hooks:
        if INPUT_HOOK in available:
            raise ValueError(f"hook {INPUT_HOOK!r} is ambiguous: it is reserved for the model's "
                             f"input, but the model also has a submodule named {INPUT_HOOK!r}; "
                             "rename the submodule to embed either")
        if hooks[0] != INPUT_HOOK:
            raise ValueError(f"hook {INPUT_HOOK!r} (the model's input) must come first in the "
                             f"hooks (forward position 0), got {hooks}")
    unknown = [h for h in hooks if h != INPUT_HOOK and h not in set(available)]
    if unknown:
        shown = ", ".join(available[:20]) + (f", … ({len(available) - 20} more)"
                                             if len(available) > 20 else "")
        raise ValueError(f"unknown hook(s) {unknown}: the model's modules are {shown} (and "
                         f"{INPUT_HOOK!r}, the model's input, first)")
    return hooks


def _check_meta(meta: dict | None) -> dict:
    meta = dict(meta or {})
    clash = sorted(_RESERVED & set(meta))
    if clash:
        raise ValueError(f"meta key(s) {clash} are reserved for the embedding records")
    return meta


def _check_batch_size(batch_size: int) -> int:
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _is_loader(images: Any) -> bool:
    """A DataLoader-like source: iterable of batches, with no row slicing of its own."""
    return (hasattr(images, "__iter__") and hasattr(images, "dataset")
            and not hasattr(images, "__getitem__"))


def _batches(images: Any, batch_size: int, transform: Callable | None
             ) -> tuple[int, int, Iterator["torch.Tensor"]]:
    """(n rows, number of batches, iterator of the model's float input batches)."""
    if _is_loader(images):
        return _loader_batches(images, transform)
    if not (hasattr(images, "__len__") and hasattr(images, "__getitem__")):
        raise ValueError(f"images must be an indexable array or a DataLoader, "
                         f"got {type(images).__name__}")
    n = len(images)
    if n < 1:
        raise ValueError("images is empty: nothing to embed")
    starts = range(0, n, batch_size)
    gen = (_model_input(images[s:s + batch_size], transform) for s in starts)
    return n, len(starts), gen


def _loader_batches(loader: Any, transform: Callable | None) -> tuple[int, int, Iterator]:
    from torch.utils.data import RandomSampler

    if getattr(loader, "drop_last", False):
        raise ValueError("DataLoader has drop_last=True: every probe row must be embedded")
    if isinstance(getattr(loader, "sampler", None), RandomSampler):
        raise ValueError("DataLoader shuffles (RandomSampler): rows must come in a fixed order, "
                         "use shuffle=False")
    try:
        sampler = getattr(loader, "sampler", None)
        n = len(sampler) if sampler is not None else len(loader.dataset)
    except TypeError as err:
        raise ValueError("the DataLoader's number of rows is unknown (iterable-style dataset): "
                         "pass an indexable array instead") from err
    if n < 1:
        raise ValueError("the DataLoader's dataset is empty: nothing to embed")
    try:
        n_batches: int | None = len(loader)
    except TypeError:
        n_batches = None

    def gen() -> Iterator:
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield _model_input(x, transform)

    return n, n_batches, gen()


def _model_input(batch: Any, transform: Callable | None) -> "torch.Tensor":
    import torch

    x = transform(batch) if transform is not None else batch
    if isinstance(x, np.ndarray):  # read-only arrays (memory maps) are copied, others shared
        x = torch.from_numpy(x if x.flags.writeable else np.array(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"an input batch is a {type(x).__name__}, not a tensor or array")
    if not torch.is_floating_point(x):
        raise ValueError(f"input batches are {x.dtype}, not floating point: pass transform= "
                         "(e.g. rra.data.normalise) to map raw images to the model's input")
    return x
