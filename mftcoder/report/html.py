"""One self-contained HTML page: inline CSS, PNGs as base64 data URIs, no script and no link to fetch; every name
and value from the run files is escaped."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape

from mftcoder.report.tables import Table

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
td.best { font-weight: bold; background: #e6f4e6; }
.note { color: #666; font-size: .85em; }
.warnings { background: #fff4e0; border: 1px solid #e0a030; padding: .5em 1em; margin: 1em 0; }
.warnings h3 { margin: .2em 0; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; margin-bottom: .3em; }
"""


@dataclass
class RenderedFigure:
    title: str
    description: str
    png: bytes
    file: str  # the PNG's name beside the report, shown in the caption


def table_html(table: Table) -> str:
    parts = [f"<h3>{escape(table.title)}</h3>"]
    if table.rows:
        head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
        body = []
        for r, row in enumerate(table.rows):
            cells = "".join(f'<td class="best">{escape(c)}</td>' if (r, c_i) in table.best else f"<td>{escape(c)}</td>"
                            for c_i, c in enumerate(row))
            body.append(f"<tr>{cells}</tr>")
        parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")
    if table.note:
        parts.append(f'<p class="note">{escape(table.note)}</p>')
    return "\n".join(parts)


def warnings_html(run_name: str, warnings: list[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    return f'<div class="warnings"><h3>Warnings: {escape(run_name)}</h3><ul>{items}</ul></div>'


def figure_html(fig: RenderedFigure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f"<figure><h3>{escape(fig.title)}</h3><figcaption>{escape(fig.description)} "
            f'<span class="note">({escape(fig.file)})</span></figcaption>'
            f'<img alt="{escape(fig.title)}" src="data:image/png;base64,{data}"></figure>')


def page(title: str, sections: list[str]) -> str:
    body = "\n".join(s for s in sections if s)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n{body}\n</body></html>\n")
