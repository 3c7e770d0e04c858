"""The captions ``snakemake --report`` gives the report's figures, for the report test modules
(docs/report/figures.rst rendered as Snakemake renders it)."""

from __future__ import annotations

from pathlib import Path

from rra.report import FigureRecord

ROOT = Path(__file__).resolve().parent.parent


def figure_caption(figure: str) -> str:
    """The caption ``snakemake --report`` gives a figure (its path under reports/figures,
    without .png): docs/report/figures.rst rendered as Snakemake renders it (Jinja with
    ``snakemake.wildcards``, then reStructuredText; a docutils warning is an error)."""
    from types import SimpleNamespace

    from docutils.core import publish_parts
    from jinja2 import Environment

    template = Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        (ROOT / "docs/report/figures.rst").read_text())
    text = template.render(snakemake=SimpleNamespace(wildcards=SimpleNamespace(figure=figure)))
    publish_parts(text, writer="html", settings_overrides={"halt_level": 2})
    return text.strip().splitlines()[0]


def check_family_captions(records: list[FigureRecord]) -> set[str]:
    """Every figure's caption for ``snakemake --report`` names its family (never the fallback
    line); the captions, one per family."""
    captions = {}
    for rec in records:
        figure = rec.file("png").removeprefix("figures/").removesuffix(".png")
        caption = figure_caption(figure)
        assert caption.startswith("**") and "A figure of the rra study" not in caption, figure
        captions.setdefault(caption, figure)
    return set(captions)
