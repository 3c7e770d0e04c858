"""Save an Altair chart as self-contained HTML, PNG and SVG, atomically. [ours]

HTML embeds the Vega, Vega-Lite and vega-embed bundles inline (``inline=True``; the bundles come
with vl-convert-python), so a page opens offline. PNG and SVG are rendered by vl-convert, also
offline. Every file is written under a temporary name and renamed (:func:`rra.io.atomic_path`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rra.io import PathLike, atomic_path, sha256_file

FORMATS = ("html", "png", "svg")
PNG_SCALE = 2.0

# Attributes that make a browser fetch something: <script src>, <link href>, <img src>, ...
_FETCH = re.compile(r"<(script|link|img|iframe|source|embed)\b[^>]*?\b(src|href)\s*=\s*"
                    r"[\"']?\s*((?:https?:)?//[^\"'\s>]*)", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import\s+(?:url\()?[\"']?((?:https?:)?//[^\"')\s]+)", re.IGNORECASE)


def external_references(html: str) -> list[str]:
    """URLs that an HTML page would fetch from the network (scripts, styles, images, frames,
    CSS imports). Namespace URIs and links inside script text are not fetched and not listed."""
    return [m.group(3) for m in _FETCH.finditer(html)] + _CSS_IMPORT.findall(html)


def save_chart(chart: Any, out_stem: PathLike, *, formats: Sequence[str] = FORMATS,
               png_scale: float = PNG_SCALE) -> dict[Path, str]:
    """Write ``{out_stem}.html`` (inline assets), ``.png`` and ``.svg``; return ``{path: sha256}``.

    The spec is validated first (``chart.to_dict()``, under the active data transformer, whose
    row limit stays on). A written HTML page that references any network URL is an error.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"save_chart: unknown format(s) {unknown}; use {list(FORMATS)}")
    chart.to_dict()
    out: dict[Path, str] = {}
    for fmt in formats:
        path = Path(f"{out_stem}.{fmt}")
        options: dict[str, Any] = {"html": {"inline": True}, "png": {"scale_factor": png_scale},
                                   "svg": {}}[fmt]
        with atomic_path(path, suffix=f".{fmt}") as tmp:
            chart.save(tmp, format=fmt, override_data_transformer=False, **options)
            if fmt == "html":
                refs = external_references(tmp.read_text(encoding="utf-8"))
                if refs:
                    raise ValueError(f"{path}: the page would fetch {refs[:3]} from the network")
        out[path] = sha256_file(path)
    return out
