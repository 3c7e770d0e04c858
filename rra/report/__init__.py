"""rra.report: Altair figures of the study's tables, saved offline, and an index page.

Entry point: :func:`build_report` (``rra.report.build``), which reads exactly the files of its
input list (``rra.report.inputs.ReportInputs``, written by the report rule). Charts are pure
functions of polars frames (``rra.report.charts``); frames are read from the listed files by
``rra.report.frames``; the figure families are drawn per analysis, dataset and layer analysis
(``rra.report.metric_figures``, ``study_figures``, ``layer_figures``); the E2 guideline is a
stage of its own (``rra.metrics.hyperparams``) that the report only draws;
``rra.report.save.save_chart`` writes HTML (inline assets), PNG and SVG;
``rra.report.index.build_index`` writes ``index.html``. Altair is imported only by the modules
that draw.
"""

from rra.report.build import build_report
from rra.report.index import FigureRecord, build_index
from rra.report.inputs import ReportInputs

__all__ = ["FigureRecord", "ReportInputs", "build_index", "build_report"]
