"""docs/guarantees.md names, for every statement, the tests that prove it: each statement (a bullet, or a paragraph
under a heading) carries at least one ``tests/<file>.py::<test>`` reference, and each referenced test exists (a
top-level test function of that file; a parametrised id after the name is allowed)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "guarantees.md"
REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(\[[^\]`]*\])?`")


def statements(text: str) -> list[str]:
    """Bullets and paragraphs after the first heading (the introduction is not a statement)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("## "))
    out, current = [], []
    for line in lines[first:]:
        starts = re.match(r"^\s*\* ", line) or not line.strip() or line.startswith("## ")
        if starts and current:
            out.append("\n".join(current))
            current = []
        if line.strip() and not line.startswith("## "):
            current.append(line)
    if current:
        out.append("\n".join(current))
    return out


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_statement_names_its_tests():
    missing = [s.splitlines()[0][:90] for s in statements(DOC.read_text()) if not REF.search(s)]
    assert not missing, "statements without a test:\n" + "\n".join(missing)


def test_every_named_test_exists():
    refs = REF.findall(DOC.read_text())
    assert len(refs) >= 40
    bad = []
    for file, name, _ in refs:
        path = ROOT / file
        if not path.is_file() or name not in _tests_in(path):
            bad.append(f"{file}::{name}")
    assert not bad, "named in docs/guarantees.md but not found: " + ", ".join(bad)


def test_the_checker_finds_what_is_missing(tmp_path):
    """The two checks above on a document that breaks them."""
    text = ("intro\n\n## A\n\n* stated. Tests: `tests/engine/test_crash.py::test_a_live_lock_is_respected`.\n"
            "* stated without a test\n  over two lines.\n\nA paragraph. Tests:\n"
            "`tests/engine/test_crash.py::test_no_such_test[x]`.\n")
    found = statements(text)
    assert len(found) == 3 and [bool(REF.search(s)) for s in found] == [True, False, True]
    (file, name, param), = REF.findall(found[2])
    assert (file, name, param) == ("tests/engine/test_crash.py", "test_no_such_test", "[x]")
    assert name not in _tests_in(ROOT / file) and "test_a_live_lock_is_respected" in _tests_in(ROOT / file)
