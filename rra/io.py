"""Artifact I/O shared by every stage: atomic writes, hashing, provenance, streamed .npy files.

Rules of the house (see docs/design.md):
- Every file is written under a temporary name in the destination directory and then renamed,
  so an interrupted job never leaves a half-written artifact under its final name.
- Every artifact records what produced it (`provenance()`): package versions, seed and config.
- A hash recorded as provenance covers an artifact's content, never its measured wall times:
  `sha256_artifact` hashes a JSON manifest without its timing keys (`is_timing_key`), so two
  identical runs record identical hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _new_temp(path: Path, suffix: str) -> tuple[int, Path]:
    """A temporary file beside ``path``, with the permissions a plain ``open`` would give
    (``mkstemp`` makes files private, 0600; artifacts and reports must be readable)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    On error the temporary file is removed and an existing ``path`` is left untouched.
    ``suffix`` is appended to the temporary name for writers that insist on an extension
    (``np.save`` appends ``.npy`` unless the name already ends with it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = _new_temp(path, suffix)
    os.close(fd)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def read_json(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing JSON file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt JSON file {path}: {err}") from err


def save_npy(path: PathLike, array: np.ndarray) -> Path:
    """``np.save`` atomically (never leaves a truncated .npy under the final name)."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
    return Path(path)


def save_npz(path: PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Arrays into one uncompressed ``.npz`` (``np.load`` reads it), atomically and byte for
    byte the same for the same arrays: unlike ``np.savez``, every member carries a fixed
    timestamp (1980-01-01), so two identical runs write identical files. [ours]"""
    import zipfile

    with atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(array),
                                              allow_pickle=False)
    return Path(path)


def load_npy(path: PathLike, mmap: bool = True) -> np.ndarray:
    """Load a .npy file (memory-mapped by default) with a clear error for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing array file: {path}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"corrupt or truncated array file {path}: {err}") from err


class NpyRowWriter:
    """Stream rows into a ``.npy`` file of known final shape without holding it in memory.

    The header is written first, rows are appended in order with :meth:`write`, and
    :meth:`close` checks that exactly ``shape[0]`` rows arrived before renaming the temporary
    file onto ``path``. Use as a context manager; on error nothing appears under ``path``.
    """

    def __init__(self, path: PathLike, shape: tuple[int, ...], dtype: Any = np.float32):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = _new_temp(self.path, "")
        self._fh = os.fdopen(fd, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._fh, header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: row shape {rows.shape[1:]} != {self.shape[1:]}")
        if self.rows + rows.shape[0] > self.shape[0]:
            raise ValueError(f"{self.path.name}: more than {self.shape[0]} rows written")
        self._fh.write(memoryview(rows).cast("B"))  # no copy of the batch
        self.rows += rows.shape[0]

    def close(self) -> Path:
        self._fh.close()
        if self.rows != self.shape[0]:
            self.abort()
            raise ValueError(f"{self.path.name}: wrote {self.rows} rows, expected {self.shape[0]}")
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> "NpyRowWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


#: a table of at most this many rows is also written as CSV (:func:`write_table`)
CSV_MAX_ROWS = 200_000


def write_table(df, stem: Path) -> dict:
    """Write ``stem.parquet`` (and ``stem.csv`` when small) atomically; return file facts."""
    with atomic_path(stem.with_suffix(".parquet")) as tmp:
        df.write_parquet(tmp)
    files = [stem.with_suffix(".parquet")]
    if df.height <= CSV_MAX_ROWS:
        with atomic_path(stem.with_suffix(".csv")) as tmp:
            df.write_csv(tmp)
        files.append(stem.with_suffix(".csv"))
    return {"rows": df.height, "files": [f.name for f in files],
            "sha256": sha256_file(stem.with_suffix(".parquet"))}

def is_timing_key(key: str) -> bool:
    """Whether a manifest key holds a measured wall time: ``seconds`` or ``*_seconds``, except
    the cost model's ``predicted_*`` (a function of n, d, k and the config, so content)."""
    return (key == "seconds" or key.endswith("_seconds")) and not key.startswith("predicted")


def without_timings(record: Any) -> Any:
    """``record`` (parsed JSON) with every timing key (`is_timing_key`) removed, at any depth."""
    if isinstance(record, dict):
        return {k: without_timings(v) for k, v in record.items() if not is_timing_key(str(k))}
    if isinstance(record, list):
        return [without_timings(v) for v in record]
    return record


def sha256_artifact(path: PathLike) -> str:
    """The provenance hash of an artifact: its bytes, or for a ``.json`` manifest its content
    without measured timings (canonical JSON: sorted keys, no whitespace), so the hash
    recorded by a downstream stage is the same for two identical runs."""
    path = Path(path)
    if path.suffix != ".json":
        return sha256_file(path)
    record = without_timings(json.loads(path.read_text(encoding="utf-8")))
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """Hash of an array's dtype, shape and bytes (stable across runs and machines)."""
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}{tuple(array.shape)}".encode())
    arr = np.ascontiguousarray(array)
    flat = arr.reshape(-1)
    step = max(1, (1 << 24) // max(1, arr.itemsize))
    for start in range(0, flat.shape[0], step):
        h.update(flat[start:start + step].tobytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the interpreter and the packages whose behaviour affects the numbers."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("rra", "torch", "torchvision", "numpy", "numba", "annoy", "polars", "snakemake"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(config: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """The record every artifact carries: versions, seed, the config that made it, extras."""
    rec: dict[str, Any] = {"versions": versions()}
    if seed is not None:
        rec["seed"] = int(seed)
    if config is not None:
        rec["config"] = config
    rec.update(extra)
    return rec
