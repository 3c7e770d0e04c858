"""The output folders of one run's analyses, named by their manifest. [ours]

A metric folder is ``{results}/{dataset}/{run}/metrics/{probe}/{distance}-{backend}/`` (the
metrics stage, :func:`rra.metrics.tables.run_tables`; complete when its ``manifest.json``
exists), and its kNN graphs lie in ``{results}/{dataset}/{run}/knn/{probe}/{distance}-{backend}/``.
The names follow :mod:`rra.runs`. Stages and the report get the manifests they read from the
workflow (never by searching the results folder) and open them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rra.io import PathLike
from rra.runs import KnnSetting, Run


@dataclass(frozen=True)
class RunFolder:
    """One complete output folder of one run on one probe (its manifest exists):
    ``{results}/{dataset}/{run}/{stage}/{probe}/{name}/``."""

    path: Path
    dataset: str
    run: Run
    probe: str

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @staticmethod
    def identity(manifest: PathLike, stage: str) -> tuple[Path, str, Run, str]:
        """``(folder, dataset, run, probe)`` of a folder's manifest path; a ValueError when the
        path is not ``{dataset}/{run}/{stage}/{probe}/{name}/manifest.json``."""
        manifest = Path(manifest)
        folder = manifest.parent
        if (manifest.name != "manifest.json" or len(folder.parts) < 5
                or folder.parents[1].name != stage):
            raise ValueError(f"{manifest}: not the manifest of a {stage} folder "
                             f"({{dataset}}/{{run}}/{stage}/{{probe}}/{{name}}/manifest.json)")
        run_dir = folder.parents[2]
        return folder, run_dir.parent.name, Run.parse(run_dir.name), folder.parent.name


@dataclass(frozen=True)
class MetricFolder(RunFolder):
    """One complete metric folder of one run."""

    distance: str
    backend: str  # the setting: auto, exact, annoy or e.g. annoy-t10-sauto

    @classmethod
    def of(cls, manifest: PathLike) -> MetricFolder:
        folder, dataset, run, probe = cls.identity(manifest, "metrics")
        knn = KnnSetting.parse(folder.name)
        return cls(folder, dataset, run, probe, knn.distance, knn.setting)

    @property
    def analysis(self) -> tuple[str, str, str, str]:
        return self.dataset, self.probe, self.distance, self.backend

    @property
    def knn_manifest(self) -> Path:
        """The manifest of the kNN graphs these tables were computed from."""
        return self.path.parents[2] / "knn" / self.probe / self.path.name / "manifest.json"

    def table(self, name: str) -> Path:
        return self.path / f"{name}.parquet"


def read_tables(folders: Sequence[MetricFolder], name: str, where=None):
    """Table ``name`` (``nnts``, ``nntp``, ...) of every folder, concatenated; only the rows
    matching the polars expression ``where`` are read (a lazy scan, so large per-class tables
    stay on disk)."""
    import polars as pl

    from rra.metrics.tables import TABLES, polars_schema, scan_tables

    if name not in TABLES:
        raise ValueError(f"unknown metric table {name!r}; known: {list(TABLES)}")
    paths = [f.table(name) for f in folders]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"missing metric table {path} (its manifest exists: the "
                                    "metrics stage wrote an incomplete directory)")
    if not paths:
        return pl.DataFrame(schema=polars_schema())
    scan = scan_tables(paths)
    return (scan.filter(where) if where is not None else scan).collect()
