"""A table as header + rows of strings, with a caption and footnotes, rendered as Markdown or a LaTeX tabular."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)  # printed under the table (tests, corrections, protocol)
    footnotes: list[str] = field(default_factory=list)  # [k] markers in cells refer to these, 1-based

    def footnote(self, text: str) -> str:
        """Register a footnote (once per distinct text) and return its marker."""
        if text not in self.footnotes:
            self.footnotes.append(text)
        return f"[{self.footnotes.index(text) + 1}]"


def to_markdown(t: Table) -> str:
    lines = [f"**{t.title}**", "", "| " + " | ".join(t.header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(t.header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in t.rows]
    lines.append("")
    lines += [f"[{i}] {f}  " for i, f in enumerate(t.footnotes, 1)]
    lines += [f"{n}  " for n in t.notes]
    return "\n".join(lines).rstrip() + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_SYMBOLS = {"±": r"$\pm$", "—": "---", "†": r"$^\dagger$", "Δ": r"$\Delta$", "≥": r"$\geq$", "×": r"$\times$"}


def tex_escape(text: str) -> str:
    out = "".join(_TEX.get(ch, ch) for ch in str(text))
    for sym, rep in _TEX_SYMBOLS.items():
        out = out.replace(sym, rep)
    return out


def to_latex(t: Table) -> str:
    """A tabular that ``\\input`` can take, with its notes as a following paragraph."""
    spec = "l" + "r" * (len(t.header) - 1)
    lines = [f"% {tex_escape(t.title)}", f"\\begin{{tabular}}{{{spec}}}", r"\hline",
             " & ".join(tex_escape(h) for h in t.header) + r" \\", r"\hline"]
    lines += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in t.rows]
    lines += [r"\hline", r"\end{tabular}"]
    extra = [f"[{i}] {f}" for i, f in enumerate(t.footnotes, 1)] + t.notes
    if extra:
        lines.append("")
        lines.append(r"\par\noindent{\footnotesize " + r" \\ ".join(tex_escape(e) for e in extra) + "}")
    return "\n".join(lines) + "\n"
