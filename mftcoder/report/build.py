"""Put a report together: the figures of the registry, the tables and the warnings of each run, in one HTML file
with a PNG per figure beside it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from html import escape

from mftcoder.report import html, plots, tables
from mftcoder.report.checks import run_warnings
from mftcoder.report.runs import Run


@dataclass
class Written:
    html: str
    pngs: list[str]
    warnings: dict[str, list[str]]  # run name -> its warnings


def render_figures(runs: list[Run], png_dir: str) -> list[html.RenderedFigure]:
    os.makedirs(png_dir, exist_ok=True)
    out = []
    for spec in plots.figure_specs(runs):
        png = plots.png_bytes(plots.build_figure(spec, runs))
        name = f"{spec.key}.png"
        with open(os.path.join(png_dir, name), "wb") as f:
            f.write(png)
        out.append(html.RenderedFigure(spec.title, spec.description, png, name))
    return out


def _run_section(run: Run, compare: bool) -> str:
    parts = [f"<h2>Run {escape(run.name)}</h2>" if compare else "<h2>Run</h2>",
             f'<p class="note">{escape(os.path.abspath(run.path))}</p>']
    parts += [html.table_html(t) for t in (tables.config_table(run), tables.data_table(run), tables.valid_table(run))]
    return "\n".join(parts)


def write_report(runs: list[Run], out: str, png_dir: str) -> Written:
    compare = len(runs) > 1
    warnings = {run.name: run_warnings(run) for run in runs}
    figures = render_figures(runs, png_dir)
    title = "mftcoder report: " + (" vs ".join(r.name for r in runs))
    sections = [html.warnings_html(run.name, warnings[run.name]) for run in runs]
    if compare:
        sections.append("<h2>Comparison</h2>" + html.table_html(tables.compare_table(runs)))
    sections += [_run_section(run, compare) for run in runs]
    sections.append("<h2>Figures</h2>")
    sections += [html.figure_html(f) for f in figures]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(html.page(title, sections))
    return Written(out, [os.path.join(png_dir, f.file) for f in figures], warnings)
