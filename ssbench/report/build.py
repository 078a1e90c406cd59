"""Orchestrate ``ssbench table``: collect runs, pool them, write every table (md/tex/csv), figures, provenance and
a table of contents (README.md) naming what each file shows and which runs it came from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from ssbench.atomic import make_dirs, write_csv, write_json, write_text
from ssbench.errors import UserError, WriteError, first_line
from ssbench.report import figures
from ssbench.report.collect import collect
from ssbench.report.gap import gap_table, published_path, read_published
from ssbench.report.pooling import layouts as make_layouts
from ssbench.report.render import notes_latex, to_latex, to_markdown
from ssbench.report.tables import (ablation_table, classes, main_table, other_table,
                                   per_class_table, resolve_reference, significance)

FORMATS = ("md", "tex", "csv", "html")


class Contents:
    """What was written: file stems with their files, one line on what each shows and the runs behind it."""

    def __init__(self, out: Path):
        self.out = out
        self.entries: list[dict] = []

    def add(self, kind: str, files: list[str], what: str, runs: str) -> None:
        self.entries.append({"kind": kind, "files": files, "what": what, "runs": runs})

    def readme(self, results: Path, checkpoint: str, used: int, skipped: int) -> str:
        lines = ["# Tables and figures", "",
                 f"Written by `ssbench table` from `{results}` ({used} runs used, {skipped} skipped; "
                 f"{checkpoint} checkpoint). Each table comes as `.md`, `.tex` (a tabular for `\\input`, needs "
                 "`\\usepackage{booktabs}`; its notes for the caption in `-notes.tex`) and `.csv` (tidy: one row per "
                 "cell and metric); `.provenance.json` lists the run folders of every cell.", ""]
        for kind in ("table", "figure", "data"):
            items = [e for e in self.entries if e["kind"] == kind]
            if not items:
                continue
            lines += [f"## {kind.capitalize()}s" if kind != "data" else "## Data", ""]
            for e in items:
                names = ", ".join(f"[`{f}`]({f})" for f in e["files"])
                lines.append(f"- {names}: {e['what']} Runs: {e['runs']}.")
            lines.append("")
        return "\n".join(lines)


def _runs_text(rows) -> str:
    runs = [r for row in rows for r in row.runs]
    methods = sorted({r.method for r in runs})
    splits = sorted({r.labeled for r in runs})
    seeds = sorted({r.seed for r in runs})
    return (f"{len(runs)} runs: {', '.join(methods)}; labeled {', '.join(map(str, splits))}; "
            f"seeds {', '.join(map(str, seeds))}")


def build(results: Path, out: Path, reference: str | None, checkpoint: str, formats: list[str], say=print,
          draw: bool = True) -> dict:
    """Everything ``ssbench table`` writes; ``draw=False`` leaves the figures out (tables only)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"--format {','.join(formats)}: unknown format {bad[0]!r} (choose from {', '.join(FORMATS)})")
    if checkpoint not in ("best", "final"):
        raise UserError(f"--checkpoint {checkpoint}: expected best or final")
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise UserError(f"--results {results}: folder does not exist")
    try:
        published = read_published()
    except (OSError, ValueError) as exc:
        raise UserError(f"{published_path()}: {exc}") from None
    runs, skipped = collect(results, checkpoint)
    for s in skipped:
        say(f"skipped {s.path}: {s.reason}")
    if not runs:
        raise UserError(f"--results {results}: no completed runs found")
    layouts = make_layouts(runs)
    resolve_reference(layouts, reference)
    for lay in layouts:
        for row in lay.rows:
            for r in row.runs:
                say(f"used    {r.path} ({row.label}, {r.labeled} labeled, seed {r.seed}, config {r.config_hash})")
        for d in lay.duplicates:
            say(f"ignored {d.ignored.path}: {d.reason}")
    missing = _missing_reasons(skipped)
    written: dict[str, list[str]] = {}
    target, out = out, _staging(out)  # everything goes to a hidden sibling, renamed into place at the end
    try:
        _write_all(results, out, reference, checkpoint, formats, say, draw, published, runs, skipped, layouts,
                   missing, written)
        _publish(out, target)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return written


def _staging(out: Path) -> Path:
    """``paper/`` is written whole or not at all: into ``.paper.incomplete-<pid>`` beside it, then renamed. An
    existing ``out`` is replaced only if ``ssbench table`` wrote it (its index.json): never a folder of other
    files."""
    if out.exists() and not out.is_dir():
        raise WriteError(f"--out {out}: not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "index.json").is_file():
        raise WriteError(f"--out {out}: holds files that ssbench table did not write (no index.json); choose an "
                         "empty or new folder")
    staging = Path(os.path.abspath(out))
    staging = staging.with_name(f".{staging.name}.incomplete-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    make_dirs(staging)
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging``: the old folder is moved aside first and removed once the new one is in place."""
    out = Path(os.path.abspath(out))
    try:
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.replace(out, old)
        os.replace(staging, out)
    except OSError as exc:
        raise WriteError(f"--out {out}: cannot put the tables in place ({exc.strerror or exc})") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_all(results, out, reference, checkpoint, formats, say, draw, published, runs, skipped, layouts, missing,
               written) -> None:
    contents = Contents(out)
    skipped_list = [{"run": _relative(s.path, out), "reason": s.reason} for s in skipped]

    boards = []  # (layout, main-table tidy frame) for the site (--format html)

    def emit(stem: str, table, frame: pd.DataFrame | None, provenance: dict | None, what: str, runs_text: str):
        paths = []
        if "md" in formats:
            write_text(out / f"{stem}.md", to_markdown(table))
            paths.append(f"{stem}.md")
        if "tex" in formats:
            write_text(out / f"{stem}.tex", to_latex(table))
            write_text(out / f"{stem}-notes.tex", notes_latex(table))
            paths += [f"{stem}.tex", f"{stem}-notes.tex"]
        if "csv" in formats and frame is not None:
            write_csv(out / f"{stem}.csv", frame)
            paths.append(f"{stem}.csv")
        if provenance is not None:
            write_json(out / f"{stem}.provenance.json", provenance)
            paths.append(f"{stem}.provenance.json")
        written[stem] = paths
        contents.add("table", paths, what, runs_text)

    fig_dir = out / "figures"
    colors = figures.palette([r.method for lay in layouts for row in lay.rows for r in row.runs])
    for lay in layouts:
        stem = lay.stem
        policy = f"metric policy {lay.policy[0]}, {lay.units}, connectivity {lay.policy[2]}"
        sig = significance(lay, checkpoint, reference) if lay.main_rows else pd.DataFrame()
        if lay.main_rows:
            table, frame, prov = main_table(lay, checkpoint, sig, missing.get(lay.dataset, {}))
            boards.append((lay, frame))
            emit(f"main_{stem}", table, frame, {**prov, "skipped": skipped_list},
                 f"{lay.dataset} ({policy}): Dice, Jaccard, 95HD, ASD per split, mean ± std over seeds; labeled-only "
                 "baseline, semi-supervised methods and the fully supervised upper bound in their own rows; best "
                 "bold, second underlined, significance marks.", _runs_text(lay.main_rows))
        if not sig.empty:  # whatever the formats: every table's notes cite it
            write_csv(out / f"significance_{stem}.csv", sig)
            written[f"significance_{stem}"] = [f"significance_{stem}.csv"]
            contents.add("data", [f"significance_{stem}.csv"],
                         "paired Wilcoxon tests against each split's reference (volume and patient level, Holm), "
                         "mean differences with patient-cluster bootstrap CIs, scipy's method and how seeds entered.",
                         _runs_text(lay.main_rows))
        other = other_table(lay, checkpoint)
        if other is not None:
            t, f, prov = other
            emit(f"other-protocols_{stem}", t, f, prov,
                 f"{lay.dataset} ({policy}): runs of other protocols or training settings, each beside its method's "
                 "main row (not ranked, not tested).", _runs_text(lay.other_rows))
        for n in lay.splits():
            t, f, prov = per_class_table(lay, checkpoint, n)
            if t.rows:
                emit(f"perclass_{stem}_{n}labeled", t, f, prov,
                     f"{lay.dataset}, {lay.split_label(n)}: Dice and 95HD per class.",
                     _runs_text([r for r in lay.main_rows if n in r.cells or r.role == "upper"]))
        ablation = ablation_table(lay, checkpoint)
        if ablation is not None:
            emit(f"ablation_sss_{stem}", ablation, None, None, f"{lay.dataset}: SSS with DFE / PCSW on and off.",
                 _runs_text([r for r in lay.main_rows if r.method.split("@")[0] == "sss"]))
        if lay.tag or not lay.main_rows or not draw:
            continue  # figures show the dataset's main table only
        _figures(lay, checkpoint, sig, colors, fig_dir, out, written, contents, say)

    published_copy = out / "published.csv"
    if published_copy.resolve() != published_path().resolve():
        shutil.copyfile(published_path(), published_copy)
    contents.add("data", ["published.csv"], "the published numbers with the protocol each was produced under.",
                 "none (from the papers)")
    ours = {lay.dataset.removesuffix("-phantom") for lay in layouts}
    published = published[published["dataset"].isin(ours)]
    if len(published):
        gap, gap_frame = gap_table(layouts, published, checkpoint)
        emit("reproduction_gap", gap, gap_frame, None,
             "published numbers beside ours, their protocol beside ours, what differs.",
             _runs_text([row for lay in layouts for row in lay.rows]))
    else:
        say(f"no reproduction_gap: published.csv has no numbers for {', '.join(sorted(ours))}")
    if "html" in formats:
        from ssbench.report.site import write_site

        figure_files = [f for stem, files in written.items() if stem.startswith("figures_") for f in files]
        tables = {stem: files for stem, files in written.items() if not stem.startswith("figures_")}
        pages = write_site(out, results, checkpoint, boards, runs, figure_files, tables)
        written["site"] = pages
        contents.add("data", [pages[0]], "a static site (open it in a browser, from file://): one sortable "
                     "leaderboard per dataset and split with the main tables' numbers and marks, a page per run "
                     "(config, provenance, per-class and per-case tables, curves, overlays, its files).",
                     f"{len(runs)} runs")
    where = _relative(results, out)  # the folder moves with its results: no absolute paths in what it holds
    write_text(out / "README.md", contents.readme(where, checkpoint, len(runs), len(skipped)))
    write_json(out / "index.json", {"results": where, "checkpoint": checkpoint, "files": written,
                                    "runs_used": len(runs), "runs_skipped": len(skipped),
                                    "skipped": skipped_list})


def _relative(path: Path, start: Path) -> str:
    """``path`` as seen from ``start`` (e.g. '../results'): the tables' folder names no absolute path."""
    import os

    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _figures(lay, checkpoint, sig, colors, fig_dir, out, written, contents, say) -> None:
    stem = lay.stem
    files: list[str] = []

    def keep(make, name, what, rows):
        """Draw and save one figure; one that fails (a damaged predictions file, a volume that does not load)
        costs that figure, named in one line, never the tables."""
        try:
            fig = make()
            if fig is None:
                return
            paths = [str(p.relative_to(out)) for p in figures.save(fig, fig_dir, name)]
        except (UserError, OSError):  # a results folder that cannot be written stops the table (atomically)
            raise
        except Exception as exc:  # noqa: BLE001 - matplotlib, numpy and zipfile raise many types
            say(f"figure {name} skipped: {type(exc).__name__}: {first_line(exc)}")
            return
        files.extend(paths)
        contents.add("figure", paths, what, _runs_text(rows))

    if lay.splits():
        keep(lambda: figures.dice_boxes(lay, checkpoint, colors), f"dice_{stem}",
             f"{lay.dataset}: per-volume Dice of each method per split (box, points), one colour per method, shared "
             "y axis; dashed line: the upper bound's mean.", lay.main_rows)
    keep(lambda: figures.learning_curves(lay, colors), f"curves_{stem}", f"{lay.dataset}: training loss and "
         "validation Dice against iterations, per split; colour = method, line style = seed.", lay.main_rows)
    refs = sig.drop_duplicates("labeled").set_index("labeled")["reference"].to_dict() if len(sig) else {}
    for n, ref in refs.items():
        def overlay(n=n, ref=ref):
            fig, info = figures.overlays(lay, checkpoint, n, ref, colors, classes(lay))
            if fig is None:
                say(f"overlays of {lay.dataset}, {n} labeled skipped: {info['reason']}")
            return fig

        keep(overlay, f"overlays_{stem}_{n}labeled",
             f"{lay.dataset}, {lay.split_label(n)}: for each method, the test volumes it wins and loses most "
             f"against {ref} and its median volume (image, ground truth, both predictions; Dice in the titles).",
             [r for r in lay.main_rows if n in r.cells])
    written[f"figures_{stem}"] = files


def _missing_reasons(skipped) -> dict:
    """dataset -> (method, labeled) -> reason, for cells whose runs were skipped (e.g. incomplete)."""
    out: dict = {}
    for s in skipped:
        if s.cell is not None:
            dataset, method, labeled = s.cell
            out.setdefault(dataset, {})[(method, labeled)] = f"run {s.path.name} skipped: {s.reason}"
    return out
