"""The report's index page: every figure with its files, config values and input hashes, and
the measures' properties from their registry (:func:`rra.metrics.measure_properties`). [ours]

``index.html`` is plain HTML with inline CSS and no scripts; images and links are relative to the
page, so the reports folder can be moved or opened offline. ``index.json`` next to it holds the
same records for programs.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rra.io import PathLike, atomic_path, write_json


@dataclass
class FigureRecord:
    """One figure of the report.

    ``files``: ``{path relative to the reports folder: sha256}`` (``.html``, ``.png``, ``.svg``);
    ``config``: the values the figure depends on (its selection and the study config blocks);
    ``inputs``: ``{artifact path: sha256}`` of the files it was built from.
    """

    id: str
    title: str
    caption: str
    files: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    group: str = ""

    def file(self, ext: str) -> str | None:
        return next((f for f in self.files if f.endswith(f".{ext}")), None)


_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
nav li { margin: .15em 0; }
section { border-top: 1px solid #ccc; margin-top: 2em; padding-top: .5em; }
img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 85%; }
td, th { border: 1px solid #ddd; padding: .2em .5em; text-align: left; vertical-align: top; }
code, pre { font-size: 85%; }
pre { margin: 0; white-space: pre-wrap; }
"""


def _href(path: str) -> str:
    return html.escape(quote(path, safe="/"), quote=True)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return html.escape(value)
    text = json.dumps(value, indent=1, sort_keys=True, default=str)
    tag = "pre" if "\n" in text else "code"
    return f"<{tag}>{html.escape(text)}</{tag}>"


#: the columns of the index's "Measures" table: (column of
#: :func:`rra.metrics.measure_properties`, heading)
MEASURE_COLUMNS = (("name", "measure"), ("symmetric", "symmetric"),
                   ("larger_is_more_similar", "larger is more similar"),
                   ("needs_embeddings", "needs embeddings"), ("invariances", "invariances"),
                   ("tag", "tag"))


def _property(measure: dict[str, Any], column: str) -> str:
    """One cell of the "Measures" table: yes/no for a property, – where it does not apply
    (a measure of one representation), the tag with its source (``source: Kornblith et al.
    2019``, as the docstrings' tags), else the text."""
    value = measure[column]
    if column == "tag":
        sep = ": " if value == "source" else ", "
        note = f"; {measure['note']}" if measure.get("note") else ""
        value = f"{value}{sep}{measure['source']}{note}"
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return html.escape(str(value))


def _measures_html(measures: Sequence[dict[str, Any]]) -> str:
    """The "Measures" section: one row per registered measure (none: no section)."""
    if not measures:
        return ""
    e = html.escape
    head = "".join(f"<th>{e(heading)}</th>" for _, heading in MEASURE_COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{_property(m, c)}</td>" for c, _ in MEASURE_COLUMNS)
                   + "</tr>" for m in measures)
    return f"""<section id="measures">
<h2>Measures</h2>
<p>The properties of the measures of the metric tables, from their registry
(rra.metrics.registry; methods.md §4); – where a property does not apply (a measure of one
representation).</p>
<table><tr>{head}</tr>{rows}</table>
</section>"""


def _figure_html(rec: FigureRecord) -> str:
    e = html.escape
    links = " · ".join(f'<a href="{_href(f)}">{e(Path(f).suffix.lstrip(".").upper())}</a>'
                       for f in sorted(rec.files))
    png, page = rec.file("png"), rec.file("html")
    image = (f'<a href="{_href(page or png)}"><img src="{_href(png)}" alt="{e(rec.title)}"></a>'
             if png else "")
    config = "".join(f"<tr><th>{e(str(k))}</th><td>{_value(v)}</td></tr>"
                     for k, v in rec.config.items())
    inputs = "".join(f"<tr><td><code>{e(p)}</code></td><td><code>{e(h)}</code></td></tr>"
                     for p, h in sorted(rec.inputs.items()))
    outputs = "".join(f"<tr><td><code>{e(p)}</code></td><td><code>{e(h)}</code></td></tr>"
                      for p, h in sorted(rec.files.items()))
    return f"""<section id="{e(rec.id)}">
<h2>{e(rec.title)}</h2>
<p>{e(rec.caption)}</p>
<p>Files: {links}</p>
{image}
<details open><summary>Config</summary><table>{config}</table></details>
<details><summary>Inputs ({len(rec.inputs)} files, SHA-256)</summary>
<table><tr><th>artifact</th><th>sha256</th></tr>{inputs}</table></details>
<details><summary>Outputs (SHA-256)</summary>
<table><tr><th>file</th><th>sha256</th></tr>{outputs}</table></details>
</section>"""


def build_index(figures: Sequence[FigureRecord], out_path: PathLike, *,
                title: str = "rra report", intro: str = "",
                notes: dict[str, str] | None = None,
                measures: Sequence[dict[str, Any]] = ()) -> Path:
    """Write ``out_path`` (index.html) and its ``.json`` twin (``index.json``); return the path.

    Figure file paths are relative to ``out_path``'s folder. Figure ids must be unique.
    ``notes``: a line under a group's heading, by group (e.g. the kNN backend of an analysis).
    ``measures``: rows of :func:`rra.metrics.measure_properties` (as dicts), shown as the
    "Measures" table after the figures and linked from the contents.
    """
    notes = dict(notes or {})
    out_path = Path(out_path)
    ids = [f.id for f in figures]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"build_index: duplicated figure ids {dupes}")
    e = html.escape
    groups: dict[str, list[FigureRecord]] = {}
    for rec in figures:
        groups.setdefault(rec.group, []).append(rec)
    nav, body = [], []
    for group, recs in groups.items():
        items = "".join(f'<li><a href="#{e(r.id)}">{e(r.title)}</a></li>' for r in recs)
        nav.append((f"<li>{e(group)}<ul>{items}</ul></li>" if group else items))
        if group:
            body.append(f"<h2 class=\"group\">{e(group)}</h2>")
            if notes.get(group):
                body.append(f"<p class=\"note\">{e(notes[group])}</p>")
        body.extend(_figure_html(r) for r in recs)
    empty = "" if figures else "<p>No figures: the results directory holds no inputs yet.</p>"
    if measures:
        nav.append('<li><a href="#measures">Measures</a></li>')
        body.append(_measures_html(measures))
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{e(title)}</h1>
<p>{e(intro)}</p>
<p>{len(figures)} figures. Each lists the config values and the SHA-256 of the artifacts it was
built from; the HTML pages are interactive and work offline.</p>
{empty}
<nav><ul>{''.join(nav)}</ul></nav>
{''.join(body)}
</body>
</html>
"""
    with atomic_path(out_path, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    record: dict[str, Any] = {"title": title, "notes": notes,
                              "figures": [asdict(f) for f in figures]}
    if measures:
        record["measures"] = [dict(m) for m in measures]
    write_json(out_path.with_suffix(".json"), record)
    return out_path
