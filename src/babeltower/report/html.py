"""Render a report (sections of text, tables and figures) to one self-contained HTML file.

The report is data first: a list of ``Section`` objects built by the experiment from
``results.json``. Figures are embedded as base64 PNG (the PNG files stay next to the
report too), so ``report.html`` can be mailed or attached to an issue as one file.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from babeltower.io import atomic_write_text


@dataclass
class Table:
    caption: str
    rows: list[dict[str, Any]]
    note: str = ""


@dataclass
class Section:
    title: str
    text: str = ""                      # paragraphs separated by blank lines; plain text
    figures: list[tuple[str, Path]] = field(default_factory=list)   # (caption, png path)
    tables: list[Table] = field(default_factory=list)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#1d232a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta{color:#5a6470;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}
th,td{border:1px solid #d5d9de;padding:.25em .55em;text-align:right}
th{background:#f3f5f7} td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-weight:600;padding:.2em 0}
figure{display:inline-block;margin:.5em 1em .8em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #e3e6ea}
figcaption{font-size:.85em;color:#4a545e;max-width:560px}
.note{font-size:.85em;color:#5a6470}
.callout{background:#f4f8fc;border-left:4px solid #2d6cb5;padding:.6em 1em;margin:1em 0}
"""


def fmt_cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_cell(x) for x in v)
    return "–" if v is None else str(v)


def table_html(t: Table) -> str:
    if not t.rows:
        return f"<p class='note'>{html.escape(t.caption)}: no rows.</p>"
    cols: list[str] = []
    for r in t.rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt_cell(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in t.rows)
    note = f"<p class='note'>{html.escape(t.note)}</p>" if t.note else ""
    return (f"<table><caption>{html.escape(t.caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}")


def _paragraphs(text: str) -> str:
    out = []
    for para in [p.strip() for p in text.split("\n\n") if p.strip()]:
        cls = " class='callout'" if para.startswith("!") else ""
        para = para.lstrip("!").strip()
        out.append(f"<p{cls}>{html.escape(para)}</p>")
    return "\n".join(out)


def render(title: str, subtitle: str, sections: Sequence[Section], out_path: str | Path) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p class='meta'>{html.escape(subtitle)}</p>"]
    toc = "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections))
    parts.append(f"<ol class='meta'>{toc}</ol>")
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2>")
        parts.append(_paragraphs(s.text))
        for t in s.tables:
            parts.append(table_html(t))
        for caption, png in s.figures:
            png = Path(png)
            if not png.exists():
                continue
            b64 = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{html.escape(caption)} <code>({html.escape(png.name)})</code>"
                         f"</figcaption></figure>")
    parts.append("</body></html>")
    return atomic_write_text(out_path, "\n".join(parts))
