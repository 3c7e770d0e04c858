"""What the report reads: the files the workflow lists, by kind. [ours]

The report rule (rules/report.smk) writes its input list to ``{results}/inputs/report.json``
(``{"results_dir": …, "metrics": [...], "knn": [...], …}``, one list per :data:`KINDS`, paths as
the rule names them) and ``rra report --inputs`` reads it: the report draws exactly these files,
so a run that is no longer in the config is in no figure, whatever its folder still holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rra.io import PathLike, read_json

#: kind → what its files are
KINDS = {
    "metrics": "metric folders' manifest.json ({dataset}/{run}/metrics/{probe}/{knn}/)",
    "knn": "kNN graphs' manifest.json ({dataset}/{run}/knn/{probe}/{knn}/)",
    "layers": "layer-analysis folders' manifest.json ({dataset}/{run}/layers/{probe}/{analysis}/)",
    "dynamics": "representation dynamics' manifest.json ({dataset}/{run}/dynamics/{probe}/{knn}/)",
    "placement": "held-out placements' manifest.json "
                 "({dataset}/{run}/placement/{reference}/{heldout}/{distance}/)",
    "training": "train_log.json of the runs ({dataset}/{run}/)",
    "accuracy": "{dataset}/accuracy.parquet (or runs' metrics.json)",
    "cost": "{dataset}/cost.parquet",
    "stac_scales": "STAC scale choices ({dataset}/stac_scales/{baseline}.json)",
    "e2_guideline": "the E2 guideline's manifest.json ({dataset}/e2_guideline/)",
}


@dataclass(frozen=True)
class ReportInputs:
    """The report's input files by kind (:data:`KINDS`), all under ``results_dir``."""

    results_dir: Path
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, results_dir: PathLike, **files: Iterable[PathLike]) -> ReportInputs:
        """Inputs from lists by kind, each sorted by path (the report does not depend on the
        lists' order); an unknown kind, or a file outside ``results_dir``, is a ValueError."""
        unknown = sorted(set(files) - set(KINDS))
        if unknown:
            raise ValueError(f"report inputs: unknown kind(s) {unknown}; known: {list(KINDS)}")
        out = cls(Path(results_dir), {k: tuple(sorted(map(Path, files.get(k, ())))) for k in KINDS})
        for path in (p for paths in out.files.values() for p in paths):
            out.dataset_of(path)
        return out

    @classmethod
    def read(cls, path: PathLike) -> ReportInputs:
        """The inputs a JSON list file names (module docstring)."""
        data = read_json(path)
        if not isinstance(data, Mapping) or "results_dir" not in data:
            raise ValueError(f"{path}: a report input list needs 'results_dir' and lists by kind")
        return cls.of(data["results_dir"], **{k: v for k, v in data.items() if k != "results_dir"})

    def __getitem__(self, kind: str) -> tuple[Path, ...]:
        return self.files[kind]

    def dataset_of(self, path: Path) -> str:
        """The dataset folder a file lies in (the first folder under ``results_dir``)."""
        try:
            parts = path.resolve().relative_to(self.results_dir.resolve()).parts
        except ValueError:
            raise ValueError(f"report input {path} is not under the results directory "
                             f"{self.results_dir}") from None
        if len(parts) < 2:
            raise ValueError(f"report input {path} is not in a dataset folder of "
                             f"{self.results_dir}")
        return parts[0]

    def datasets(self) -> list[str]:
        """The datasets the inputs come from, sorted."""
        return sorted({self.dataset_of(p) for paths in self.files.values() for p in paths})

    def of_dataset(self, kind: str, dataset: str) -> list[Path]:
        """The files of one kind in one dataset folder, sorted by path."""
        return [p for p in self.files[kind] if self.dataset_of(p) == dataset]
