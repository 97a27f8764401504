"""`rfprobe report DIR`: one self-contained HTML file of a study (figures embedded as PNG data URIs, tables as
inline-styled HTML, no scripts, no network access), drawn from DIR/study.zarr and the checkpoints' records."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import xarray as xr

from rfprobe import __version__

STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
img{max-width:100%;border:1px solid #eee}table.prov{border-collapse:collapse;font-size:.85em}
table.prov td,table.prov th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
table.prov th{background:#f4f4f4}table.num td{text-align:right}table.num td:first-child{text-align:left}.mono{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
pre{font-size:.8em;line-height:1.25;overflow-x:auto;background:#fafafa;padding:.6em;border:1px solid #eee}"""

PROVENANCE_COLUMNS = ("label", "path", "sha256", "arch", "mode", "epoch", "seed", "dataset", "normalization")


def figure_html(fig, alt: str) -> str:
    """A matplotlib figure as an <img> with the PNG inline (base64), the figure closed afterwards."""
    from rfprobe.plots import plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def tables_html(tables) -> str:
    """rich Tables rendered as inline-styled HTML <pre> blocks (rich's own HTML export, no stylesheet)."""
    from rich.console import Console

    console = Console(record=True, width=140, file=io.StringIO(), color_system="truecolor")
    for table in tables:
        console.print(table)
    return console.export_html(inline_styles=True, code_format="<pre>{code}</pre>")


def key_table_html(tree: xr.DataTree) -> str:
    """The study's key numbers per group (rfprobe.study.groups.key_table) as an HTML table: the group, its
    number of runs, then mean ± sd over its runs' latest checkpoints for each number ("" where the study lacks
    it)."""
    from rfprobe.study.groups import key_table

    names, rows = key_table(tree)
    if not rows:
        return ""
    head = "<th>group</th><th>runs</th>" + "".join(f"<th>{html.escape(n)} (%)</th>" for n in names)
    body = []
    for label, n, cells in rows:
        body.append(f"<tr><td>{html.escape(label)}</td><td>{n}</td>" + "".join(
            f"<td>{'' if c is None else html.escape(c.text(count=False))}</td>"
            for c in cells) + "</tr>")
    return f'<table class="prov num"><tr>{head}</tr>{"".join(body)}</table>'


def provenance_html(records: dict[str, dict], tree: xr.DataTree) -> str:
    """One row per checkpoint: its file, sha256, architecture, mode, epoch, seed, training dataset and
    recorded normalisation; then, per pass, the rfprobe version, the measured data and the command."""
    from rfprobe.report_tables import study_groups

    head = "".join(f"<th>{c}</th>" for c in PROVENANCE_COLUMNS)
    rows = []
    for label, record in records.items():
        cells = []
        for c in PROVENANCE_COLUMNS:
            value = html.escape(str(record.get(c, "")))
            cells.append(f'<td class="mono">{value}</td>' if c in ("path", "sha256") else f"<td>{value}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    passes = []
    for name, node in study_groups(tree):
        attrs = node.attrs
        passes.append("<tr>" + "".join(f"<td{' class=mono' if k == 'command' else ''}>{html.escape(str(v))}</td>" for k, v in (
            ("pass", name), ("rfprobe", attrs.get("rfprobe_version", "")),
            ("data", f"{attrs.get('dataset', '')} {attrs.get('split', '')} ({attrs.get('n_examples', '')})"),
            ("normalization", attrs.get("normalization", "")), ("device", attrs.get("device", "")),
            ("command", attrs.get("command", "")))) + "</tr>")
    return (f'<table class="prov"><tr>{head}</tr>{"".join(rows)}</table>'
            '<h3>Passes</h3><table class="prov"><tr><th>pass</th><th>rfprobe</th><th>data (examples)</th>'
            f'<th>normalization (per checkpoint)</th><th>device</th><th>command</th></tr>{"".join(passes)}</table>')


def build(out: str | os.PathLike) -> str:
    """The report of the study in `out` as one HTML document."""
    from rfprobe.plots import figure
    from rfprobe.plots.study import STUDY_FIGURES
    from rfprobe.report_tables import study_groups, study_tables, tables
    from rfprobe.study import as_result, open_study, records, summary

    out = Path(out)
    tree = open_study(out).load()
    labels = [label for label in str(tree.attrs.get("checkpoints", "")).split(", ") if label]
    found = records(out, labels)
    recs = {label: found[label] for label in labels if label in found}
    parts = [f"<h1>rfprobe study: {html.escape(out.resolve().name)}</h1>",
             f"<p>{len(recs)} checkpoints, passes: {html.escape(', '.join(n for n, _ in study_groups(tree)))}. "
             f"Written by rfprobe {html.escape(__version__)} from <span class=mono>{html.escape(str(out / 'study.zarr'))}"
             "</span> (open it with <span class=mono>xr.open_datatree(path, engine=\"zarr\")</span>).</p>",
             "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary(tree)) + "</ul>",
             "<h2>Key numbers by group</h2>",
             "<p>Runs that differ only in their seed form a group; each cell is the mean ± sd over the group's runs "
             "at their latest checkpoint (sd blank for one run).</p>", key_table_html(tree)]
    for title, draw, alt in STUDY_FIGURES:
        fig = draw(tree)
        if fig is not None:
            parts += [f"<h2>{html.escape(title)}</h2>", figure_html(fig, alt)]
    parts += ["<h2>Headline numbers per checkpoint</h2>", tables_html(study_tables(tree))]
    for name, node in study_groups(tree):
        ds = as_result(node.to_dataset())
        parts += [f'<h2 id="{name}">{name}</h2>', figure_html(figure(ds), f"{name} figure")]
        if ds.sizes["checkpoint"] <= 4:
            parts.append(tables_html(tables(ds)))
    parts += ["<h2>Provenance</h2>", provenance_html(recs, tree)]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>rfprobe study {html.escape(out.name)}'
            f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def write(out: str | os.PathLike, path: str | os.PathLike | None = None, overwrite: bool = True) -> Path:
    """Write `build(out)` to `path` (default out/report.html) atomically; an existing path is replaced only
    when it is a plain file (a report)."""
    from rfprobe.atomic import atomic_file
    from rfprobe.results import check_writable

    path = Path(path) if path is not None else Path(out) / "report.html"
    check_writable(path, overwrite, replaceable=lambda p: p.is_file() and not p.is_symlink(), what="a report file")
    text = build(out)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
