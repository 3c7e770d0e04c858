"""rra.report: Altair figures of the study's metric tables, saved offline, and an index page.

Entry point: :func:`build_report` (``rra.report.build``). Charts are pure functions of polars
frames (``rra.report.charts``); frames are read from the results directory by
``rra.report.frames``; the E2 comparison of RRA settings and its guideline table are computed
by ``rra.report.hyperparams``; ``rra.report.save.save_chart`` writes HTML (inline assets), PNG
and SVG; ``rra.report.index.build_index`` writes ``index.html``. Altair is imported only by the
modules that draw.
"""

from rra.report.build import build_report
from rra.report.index import FigureRecord, build_index

__all__ = ["FigureRecord", "build_index", "build_report"]
