"""A paper table (column groups, rows in sections, ranked cells, notes) rendered as LaTeX or Markdown.

LaTeX comes from pandas' ``Styler.to_latex``: grouped headers as ``\\multicolumn``, booktabs rules, the best
value per column in bold and the second best underlined; the only additions are ``\\cmidrule`` under each group
and a ``\\midrule`` between row sections (baseline | methods | upper bound). The .tex holds the tabular alone, so
that ``\\input`` takes it inside a paper's own table environment (it needs ``\\usepackage{booktabs}``); the notes
(what the marks mean, the protocol) go to ``<stem>-notes.tex`` for the caption or a line under the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Column:
    name: str  # e.g. 'Dice % ↑'
    group: str = ""  # e.g. '3 labeled (5%)': columns of one group sit under one \multicolumn
    direction: int = 0  # +1 higher is better, -1 lower is better, 0 not ranked
    align: str = "c"  # LaTeX column type, e.g. 'c', 'l' or 'p{5cm}'


@dataclass
class Cell:
    mean: float | None = None
    std: float | None = None
    text: str | None = None  # a text cell (names, protocol words); numbers are formatted from mean/std
    mark: str = ""  # significance mark appended to the number, e.g. '†'
    note: int | None = None  # footnote number
    rank: int | None = None  # 1 best, 2 second best (set by rank())
    digits: int = 2

    @property
    def rounded(self) -> float | None:
        if self.mean is None or not math.isfinite(self.mean):
            return None
        return round(self.mean, self.digits)


@dataclass
class TableRow:
    label: str
    entries: list[Cell]
    section: str = ""  # rows of one section sit between rules
    ranked: bool = True  # takes part in best / second best


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[TableRow] = field(default_factory=list)
    stub: str = "Method"
    notes: list[str] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)

    def footnote(self, text: str) -> int:
        """Register a footnote (once per distinct text) and return its number."""
        if text not in self.footnotes:
            self.footnotes.append(text)
        return self.footnotes.index(text) + 1

    @property
    def grouped(self) -> bool:
        return any(c.group for c in self.columns)


def rank(table: Table) -> None:
    """Best (1) and second best (2) per ranked column among ranked rows, on the values as printed; ties share a
    rank. A best needs two rows to compare, a second best three."""
    for j, col in enumerate(table.columns):
        if not col.direction:
            continue
        cells = [r.entries[j] for r in table.rows if r.ranked and r.entries[j].rounded is not None]
        for e in cells:
            e.rank = None
        distinct = sorted({e.rounded for e in cells}, reverse=col.direction > 0)
        for place, needed in ((1, 2), (2, 3)):
            if len(cells) >= needed and len(distinct) >= place:
                for e in cells:
                    if e.rounded == distinct[place - 1]:
                        e.rank = place


# ---- text of one cell ------------------------------------------------------------------------------------------

def _number(x: float, digits: int) -> str:
    return f"{x:.{digits}f}" if x is not None and math.isfinite(x) else "—"


def cell_markdown(e: Cell) -> str:
    if e.text is not None:
        text = e.text
    elif e.mean is None or not math.isfinite(e.mean):
        text = "—"
    else:
        text = _number(e.mean, e.digits)
        if e.std is not None and math.isfinite(e.std):
            text += f" ± {_number(e.std, e.digits)}"
    text += e.mark
    if e.rank == 1:
        text = f"**{text}**"
    elif e.rank == 2:
        text = f"<ins>{text}</ins>"
    if e.note is not None:
        text += f" [{e.note}]"
    return text.replace("|", "\\|")


def cell_latex(e: Cell) -> str:
    if e.text is not None:
        text = tex_text(e.text)
    elif e.mean is None or not math.isfinite(e.mean):
        text = "---"
    else:
        text = _number(e.mean, e.digits)
        if e.std is not None and math.isfinite(e.std):
            text += rf"\,{{\scriptsize$\pm${_number(e.std, e.digits)}}}"
    text += tex_text(e.mark)
    if e.note is not None:
        text += f"$^{{{e.note}}}$"
    return text


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_SYMBOLS = {"±": r"$\pm$", "—": "---", "–": "--", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$",
                "Δ": r"$\Delta$", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "↑": r"$\uparrow$",
                "↓": r"$\downarrow$", "−": r"$-$", "→": r"$\rightarrow$", "∩": r"$\cap$", "|": r"$|$",
                "<": r"$<$", ">": r"$>$"}


def tex_text(text: str) -> str:
    """Plain text as LaTeX: special characters escaped, the few symbols the tables use in math mode."""
    out = "".join(_TEX.get(ch, ch) for ch in str(text)).replace("--", "-{}-")  # '--split', not an en dash
    for sym, rep in _TEX_SYMBOLS.items():
        out = out.replace(sym, rep)
    return out


# ---- whole tables ----------------------------------------------------------------------------------------------

def to_markdown(t: Table) -> str:
    """A GitHub table: group names above their first column, the metric names in the header."""
    lines = [f"**{t.title}**", ""]
    if t.grouped:
        groups, previous = [], None
        for c in t.columns:
            groups.append(c.group if c.group != previous else "")
            previous = c.group
        lines.append("| | " + " | ".join(groups) + " |")
        lines.append("|---|" + "|".join(":---:" for _ in t.columns) + "|")
        lines.append(f"| {t.stub} | " + " | ".join(c.name for c in t.columns) + " |")
    else:
        lines.append(f"| {t.stub} | " + " | ".join(c.name for c in t.columns) + " |")
        lines.append("|---|" + "|".join(":---:" if c.direction else "---" for c in t.columns) + "|")
    sections = [r.section for r in t.rows]
    labelled = len(set(sections)) > 1
    previous = None
    for r in t.rows:
        if labelled and r.section != previous and r.section:
            lines.append(f"| *{r.section}* |" + " |" * len(t.columns))
        previous = r.section
        label = r.label.replace("|", "\\|")
        lines.append(f"| {label} | " + " | ".join(cell_markdown(e) for e in r.entries) + " |")
    lines.append("")
    lines += [f"[{i}] {f}  " for i, f in enumerate(t.footnotes, 1)]
    lines += [f"{n}  " for n in t.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_latex(t: Table) -> str:
    """The tabular (booktabs, grouped columns, bold best, underlined second), preceded by comment lines."""
    if t.grouped:
        columns = pd.MultiIndex.from_tuples([("", t.stub)] + [(c.group, c.name) for c in t.columns])
    else:
        columns = pd.Index([t.stub] + [c.name for c in t.columns])
    data = [[tex_text(r.label)] + [cell_latex(e) for e in r.entries] for r in t.rows]
    frame = pd.DataFrame(data, columns=columns)
    styles = pd.DataFrame([[""] + [_style(e) for e in r.entries] for r in t.rows], columns=columns)
    styler = frame.style.hide(axis="index").format_index(tex_text, axis=1)
    styler = styler.apply(lambda _: styles, axis=None)
    spec = "l" + "".join(c.align for c in t.columns)
    body = styler.to_latex(hrules=True, multicol_align="c", column_format=spec)
    lines = body.splitlines()
    if t.grouped:
        lines.insert(lines.index(r"\toprule") + 2, _cmidrules(t))
    _section_rules(lines, t)
    header = [f"% {t.title}", r"% \input inside a table environment; needs \usepackage{booktabs}."]
    return "\n".join(header + lines) + "\n"


def notes_latex(t: Table) -> str:
    """The footnotes and notes of a table as a LaTeX paragraph (for a caption or a line under the table)."""
    parts = [f"$^{{{i}}}${tex_text(f)}" for i, f in enumerate(t.footnotes, 1)] + [tex_text(n) for n in t.notes]
    return " ".join(parts) + "\n"


def _style(e: Cell) -> str:
    return {1: "textbf:--rwrap;", 2: "underline:--rwrap;"}.get(e.rank, "")


def _cmidrules(t: Table) -> str:
    """One \\cmidrule under each named column group (LaTeX columns are 1-based; the stub is column 1)."""
    rules, j = [], 0
    while j < len(t.columns):
        k = j
        while k + 1 < len(t.columns) and t.columns[k + 1].group == t.columns[j].group:
            k += 1
        if t.columns[j].group:
            rules.append(rf"\cmidrule(lr){{{j + 2}-{k + 2}}}")
        j = k + 1
    return " ".join(rules)


def _section_rules(lines: list[str], t: Table) -> None:
    """A \\midrule where one row section ends and the next begins."""
    first = lines.index(r"\midrule") + 1
    for i in range(len(t.rows) - 1, 0, -1):
        if t.rows[i].section != t.rows[i - 1].section:
            lines.insert(first + i, r"\midrule")
