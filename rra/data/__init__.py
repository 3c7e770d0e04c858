"""Data stage: read datasets in their standard formats, write versionable split arrays, and
draw the probe set.

Entry points: :func:`prepare_dataset` (one split per ``out_dir/{split}/``), :func:`load_split`,
:func:`select_probe`. Registry: :data:`DATASETS`, :func:`dataset_info`. Network inputs:
:func:`normalise` (uint8 NHWC -> float32 NCHW with the dataset's mean/std).
"""

from .base import Dataset, DatasetInfo, normalise
from .prepare import Split, load_split, prepare_dataset, select_probe
from .registry import DATASETS, dataset_info, expected_class_counts, get_dataset

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "Split", "dataset_info", "expected_class_counts",
           "get_dataset", "load_split", "normalise", "prepare_dataset", "select_probe"]
