"""``ssbench table --format html``: a static results site in ``<out>/site/``, opened from ``file://``.

``index.html`` holds one leaderboard per dataset (metric policy) and split: the main table's numbers (the rows of
its ``.csv``), its significance marks, best bold and second best underlined, every column sortable, a filter by
method; links to each run's page, the tables' files and the figures. ``runs/<run>.html`` shows one run: its
config, provenance (run.json), per-class and per-case tables, curves (from its TensorBoard events, else
train_log.csv), the last validation's overlays, links to its files (copied beside the page, checkpoints aside).

Plain HTML with one inline script and style (sorting, filtering; ``#sort=<table>:<column>:<asc|desc>`` and
``#filter=<text>`` in the address apply them on load): no server, nothing fetched from the internet.
"""

from __future__ import annotations

import html
import math
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from ssbench import runfolder
from ssbench.atomic import write_text
from ssbench.metrics.catalog import metrics
from ssbench.report.tables import SECTIONS, metric_header

SITE = "site"
RUN_FILES = (runfolder.CONFIG, runfolder.RUN_INFO, runfolder.SUMMARY, runfolder.SPLIT, runfolder.CASES,
             runfolder.TRAIN_LOG)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem auto;max-width:72rem;padding:0 1rem;
color:#1b1b1b}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none;background:#f4f4f4}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.best{font-weight:bold}td.second{text-decoration:underline}
tr.upper td{color:#555;font-style:italic}
pre{background:#f6f6f6;padding:.6rem;overflow:auto;font-size:.8rem}
input.filter{margin:.25rem 0;padding:.2rem .4rem}
.note{color:#555;font-size:.85rem}
img{max-width:100%}img.overlay{width:36rem;image-rendering:pixelated}
"""

SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    var v = cell.getAttribute("data-sort");
    if (v === null) { return cell.textContent.trim().toLowerCase(); }
    var x = parseFloat(v);
    return isNaN(x) ? null : x;
  }
  function sortTable(table, col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      if (x < y) { return dir === "asc" ? -1 : 1; }
      if (x > y) { return dir === "asc" ? 1 : -1; }
      return 0;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === col) { th.setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending"); }
      else { th.removeAttribute("aria-sort"); }
    });
  }
  function filterTable(table, text) {
    var q = text.trim().toLowerCase();
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      var name = (r.getAttribute("data-method") || "").toLowerCase();
      r.hidden = q !== "" && name.indexOf(q) < 0;
    });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener("click", function () {
        sortTable(table, i, th.getAttribute("aria-sort") === "ascending" ? "desc" : "asc");
      });
    });
  });
  document.querySelectorAll("input.filter").forEach(function (input) {
    input.addEventListener("input", function () {
      document.querySelectorAll("table.filterable").forEach(function (t) { filterTable(t, input.value); });
    });
  });
  var args = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (part) {
    var i = part.indexOf("=");
    if (i > 0) { args[part.slice(0, i)] = decodeURIComponent(part.slice(i + 1)); }
  });
  if (args.sort) {
    var s = args.sort.split(":"), table = document.getElementById(s[0]);
    if (table) { sortTable(table, parseInt(s[1], 10), s[2] === "desc" ? "desc" : "asc"); }
  }
  if (args.filter) {
    document.querySelectorAll("input.filter").forEach(function (input) { input.value = args.filter; });
    document.querySelectorAll("table.filterable").forEach(function (t) { filterTable(t, args.filter); });
  }
  document.body.setAttribute("data-ready", "1");
})();
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _href(path: str) -> str:
    return _e(quote(path, safe="/#=&:.,@-_"))


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n<script>{SCRIPT}</script>\n</body></html>\n")


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating)) and math.isfinite(x)


def _num(x, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "—"


def run_slug(run, results: Path) -> str:
    """A run's page name: its folder under the results root, '/' as '__'."""
    try:
        rel = Path(run.path).resolve().relative_to(Path(results).resolve())
    except ValueError:
        rel = Path(run.path).name
    return "__".join(Path(rel).parts)


def _table(table_id: str, header: list[str], rows: list[tuple[dict, list[tuple[str, object, str]]]],
           filterable: bool = False) -> str:
    """rows: (row attributes, [(cell html, sort key or None, css class)])."""
    classes = "sortable" + (" filterable" if filterable else "")
    out = [f"<table id=\"{_e(table_id)}\" class=\"{classes}\"><thead><tr>"]
    out += [f"<th>{_e(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for attrs, cells in rows:
        a = "".join(f" {k}=\"{_e(v)}\"" for k, v in attrs.items())
        out.append(f"<tr{a}>")
        for content, sort, css in cells:
            s = f" data-sort=\"{_e(repr(float(sort)) if _finite(sort) else 'nan')}\"" if sort is not None or css \
                else ""
            c = f" class=\"{css}\"" if css else ""
            out.append(f"<td{c}{s}>{content}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _cell(entry: pd.Series) -> tuple[str, object, str]:
    """A leaderboard cell from the main table's tidy CSV row: mean ± std and the mark, as the table prints them."""
    text = _num(entry["mean"])
    if _finite(entry["std"]):
        text += f" ± {_num(entry['std'])}"
    mark = entry["mark"] if isinstance(entry["mark"], str) else ""
    rank = entry["rank"] if _finite(entry["rank"]) else None
    return _e(text + mark), entry["mean"], {1: "best", 2: "second"}.get(rank, "num")


def leaderboards(lay, frame: pd.DataFrame, results: Path) -> str:
    """One sortable, filterable table per split of a layout's main table (the upper bound under each split)."""
    out = []
    units = lay.units
    header = ["Method", "Section", "Seeds"] + [metric_header(m, units) for m in metrics()]
    rows_by_label = {r.label: r for r in lay.main_rows}
    for n in lay.splits():
        part = frame[(frame["labeled"] == n) & (frame["section"] != "upper") | (frame["section"] == "upper")]
        rows = []
        for label, cells in part.groupby("row", sort=False):
            row = rows_by_label[label]
            runs = row.cells[max(row.cells)] if row.role == "upper" else row.cells.get(n, [])
            links = " ".join(f"<a href=\"{_href('runs/' + run_slug(r, results) + '.html')}\">{_e(r.seed)}</a>"
                             for r in runs)
            by_metric = cells.set_index("metric")
            entries = [(_e(label), None, ""), (_e(SECTIONS[row.role]), None, "note"), (links, len(runs), "num")]
            entries += [_cell(by_metric.loc[m.name]) if m.name in by_metric.index else ("—", None, "num")
                        for m in metrics()]
            rows.append(({"data-method": f"{label} {row.method}", **({"class": "upper"} if row.role == "upper"
                                                                       else {})}, entries))
        table_id = f"board-{lay.stem}-{n}"
        out.append(f"<h3>{_e(lay.split_label(n))}</h3>")
        out.append(_table(table_id, header, rows, filterable=True))
    return "\n".join(out)


def write_site(out: Path, results: Path, checkpoint: str, boards: list, runs: list, figures: list[str],
               tables: dict[str, list[str]]) -> list[str]:
    """The site under ``out/site``; returns its files relative to ``out``. ``boards``: (layout, main-table tidy
    frame) per layout with a main table; ``figures``: figure files relative to ``out``; ``tables``: stem -> its
    files (relative to ``out``)."""
    site = Path(out) / SITE
    if site.exists():
        shutil.rmtree(site)
    written: list[str] = []
    body = ["<h1>Results</h1>",
            f"<p class=\"note\">Built by <code>ssbench table</code> from <code>{_e(results)}</code>, {_e(checkpoint)}"
            " checkpoint: the numbers of the main tables (mean ± std over seeds; † / ‡ significantly better / worse "
            "than the split's reference; bold best, underline second best). Click a column to sort it.</p>",
            "<p><label>Filter by method: <input class=\"filter\" type=\"search\" placeholder=\"e.g. unimatch\">"
            "</label></p>"]
    for lay, frame in boards:
        body.append(f"<h2>{_e(lay.dataset)}" + (f" ({_e(lay.tag)})" if lay.tag else "") + "</h2>")
        files = tables.get(f"main_{lay.stem}", [])
        if files:
            body.append("<p>Main table: " + ", ".join(f"<a href=\"{_href('../' + f)}\">{_e(f)}</a>" for f in files)
                        + "</p>")
        body.append(leaderboards(lay, frame, results))
        figs = [f for f in figures if f.endswith(".png") and f"_{lay.stem}" in Path(f).stem]
        for f in figs:
            body.append(f"<figure><img src=\"{_href('../' + f)}\" alt=\"{_e(Path(f).stem)}\">"
                        f"<figcaption class=\"note\">{_e(Path(f).stem)}</figcaption></figure>")
    other = {stem: files for stem, files in tables.items() if not stem.startswith("main_") and files}
    if other:
        body.append("<h2>Other tables and data</h2><ul>")
        for stem, files in other.items():
            body.append(f"<li>{_e(stem)}: " + ", ".join(f"<a href=\"{_href('../' + f)}\">{_e(Path(f).suffix)}</a>"
                                                      for f in files) + "</li>")
        body.append("</ul>")
    body.append("<h2>Runs</h2>")
    body.append(_runs_index(runs, results))
    write_text(site / "index.html", _page("ssbench results", "\n".join(body)))
    written.append(f"{SITE}/index.html")
    for run in runs:
        written += _run_page(site, run, results, checkpoint)
    return written


def _runs_index(runs, results) -> str:
    rows = []
    for r in sorted(runs, key=lambda r: (r.dataset, r.method, r.labeled, r.seed)):
        slug = run_slug(r, results)
        rows.append(({"data-method": f"{r.display_name} {r.method}"},
                     [(f"<a href=\"{_href('runs/' + slug + '.html')}\">{_e(slug.replace('__', '/'))}</a>", None, ""),
                      (_e(r.dataset), None, ""), (_e(r.display_name), None, ""), (_e(r.labeled), r.labeled, "num"),
                      (_e(r.seed), r.seed, "num"), (_e(r.config_hash), None, "")]))
    return _table("runs", ["Run", "Dataset", "Method", "Labeled", "Seed", "Config hash"], rows, filterable=True)


def _run_page(site: Path, run, results: Path, checkpoint: str) -> list[str]:
    slug = run_slug(run, results)
    files_dir = site / "runs" / slug
    files_dir.mkdir(parents=True, exist_ok=True)
    written = []
    links = []
    for name in RUN_FILES:
        src = Path(run.path) / name
        if src.is_file():
            shutil.copyfile(src, files_dir / name)
            written.append(f"{SITE}/runs/{slug}/{name}")
            links.append(f"<a href=\"{_href(slug + '/' + name)}\">{_e(name)}</a>")
    info = run.info or {}
    body = [f"<p><a href=\"../index.html\">← all results</a></p>",
            f"<h1>{_e(run.display_name)} · {_e(run.dataset)} · {_e(run.labeled)} labeled · seed {_e(run.seed)}</h1>",
            f"<p class=\"note\">{_e(Path(run.path))}</p>",
            "<p>Files: " + " · ".join(links) + "</p>"]
    body.append(f"<h2>Per class ({_e(checkpoint)} checkpoint)</h2>")
    body.append(_per_class(run, checkpoint))
    body.append("<h2>Curves</h2>")
    body.append(_curves(run))
    overlays = _overlays(run, files_dir)
    if overlays:
        body.append("<h2>Validation overlays (last validation: image, ground truth, prediction)</h2>")
        for name in overlays:
            written.append(f"{SITE}/runs/{slug}/{name}")
            body.append(f"<figure><img class=\"overlay\" src=\"{_href(slug + '/' + name)}\" alt=\"{_e(name)}\">"
                        f"<figcaption class=\"note\">{_e(name)}</figcaption></figure>")
    body.append(f"<h2>Per case ({_e(checkpoint)} checkpoint, Dice %)</h2>")
    body.append(_per_case(run, checkpoint))
    body.append("<h2>Provenance</h2>")
    keys = ("status", "method", "method_source", "config_hash", "device", "world_size", "git_commit", "git_dirty",
            "versions", "python", "host", "command", "start", "end", "wall_time_s", "tracking", "warnings")
    body.append("<table><tbody>" + "".join(f"<tr><td>{_e(k)}</td><td style=\"text-align:left\"><code>"
                                           f"{_e(_show(info[k]))}</code></td></tr>" for k in keys if k in info)
                + "</tbody></table>")
    config = Path(run.path) / runfolder.CONFIG
    body.append("<h2>Config</h2><pre>" + _e(config.read_text() if config.is_file() else "(no config.yaml)")
                + "</pre>")
    write_text(site / "runs" / f"{slug}.html", _page(f"{run.display_name} {slug}", "\n".join(body)))
    written.append(f"{SITE}/runs/{slug}.html")
    return written


def _show(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_show(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return str(v)


def _per_class(run, checkpoint: str) -> str:
    means = run.class_means(checkpoint)
    header = ["Class"] + [m.header(run.settings.get("eval.hd_units", "")) for m in metrics()]
    rows = []
    for cls, m in means.iterrows():
        rows.append(({}, [(_e(cls), None, "")] + [(_num(m[x.name] * x.scale), m[x.name] * x.scale, "num")
                                                  for x in metrics()]))
    return _table("per-class", header, rows)


def _per_case(run, checkpoint: str) -> str:
    f = run.frame[run.frame["checkpoint"] == checkpoint]
    wide = f.pivot_table(index="case_id", columns="class", values="dice", aggfunc="first", sort=False) * 100
    rows = [({"data-method": case}, [(_e(case), None, "")] + [(_num(v), v, "num") for v in values])
            for case, values in zip(wide.index, wide.to_numpy())]
    return _table("per-case", ["Case", *map(str, wide.columns)], rows)


def _curves(run) -> str:
    """The training loss and validation Dice as inline SVG, from the run's TensorBoard events (train_log.csv for
    runs without them)."""
    from ssbench.report.figures import run_curves

    curves = run_curves(run)
    if curves is None or curves.empty:
        return "<p class=\"note\">no training log</p>"
    parts = []
    for column, title in (("loss", "training loss"), ("val_dice", "validation Dice")):
        if column not in curves.columns:
            continue
        d = curves[["iteration", column]].dropna()
        if d.empty:
            continue
        parts.append(_svg(d["iteration"].to_numpy(float), d[column].to_numpy(float), title))
    return "".join(parts) or "<p class=\"note\">no curves</p>"


def _svg(x: np.ndarray, y: np.ndarray, title: str, w: int = 420, h: int = 220) -> str:
    pad = 40
    x0, x1 = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1
    y0, y1 = float(y.min()), float(y.max()) if y.max() > y.min() else float(y.min()) + 1
    px = pad + (x - x0) / (x1 - x0) * (w - 2 * pad)
    py = h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py))
    return (f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\">"
            f"<title>{_e(title)}</title><text x=\"{pad}\" y=\"16\" font-size=\"12\">{_e(title)}</text>"
            f"<rect x=\"{pad}\" y=\"{pad}\" width=\"{w - 2 * pad}\" height=\"{h - 2 * pad}\" fill=\"none\" "
            "stroke=\"#ccc\"/>"
            f"<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{points}\"/>"
            f"<text x=\"{pad}\" y=\"{h - pad + 14}\" font-size=\"10\">{x0:g}</text>"
            f"<text x=\"{w - pad}\" y=\"{h - pad + 14}\" font-size=\"10\" text-anchor=\"end\">{x1:g} iterations</text>"
            f"<text x=\"{pad - 4}\" y=\"{pad + 4}\" font-size=\"10\" text-anchor=\"end\">{y1:.3g}</text>"
            f"<text x=\"{pad - 4}\" y=\"{h - pad}\" font-size=\"10\" text-anchor=\"end\">{y0:.3g}</text></svg>")


def _overlays(run, folder: Path) -> list[str]:
    """The last validation's overlay pictures from the run's TensorBoard events, as PNG files in ``folder``."""
    from ssbench.events import TB_FOLDER, event_files

    files = event_files(Path(run.path) / TB_FOLDER)
    if not files:
        return []
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    last: dict[str, tuple[int, bytes]] = {}
    for path in files:
        for record in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(record)
            for v in event.summary.value:
                if v.tag.startswith("val/overlay/") and v.HasField("image"):
                    if v.tag not in last or event.step >= last[v.tag][0]:
                        last[v.tag] = (event.step, v.image.encoded_image_string)
    names = []
    for tag_, (step, png) in sorted(last.items()):
        name = f"overlay_{tag_.rsplit('/', 1)[-1]}_{step}.png"
        (folder / name).write_bytes(png)
        names.append(name)
    return names
