"""The package's import rules, read from the source (every import statement, at any depth) and checked at run time:
metrics imports nothing else of ssbench; datasets never import methods, the engine, the CLI or reporting; methods
never import the CLI or reporting; only the SSS method imports sam2 (or the ``training`` package sam2 installs);
only UniMatch V2 imports timm."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ssbench

PACKAGE = Path(ssbench.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module imported anywhere in ``path`` (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from ssbench import engine`
    return found


def _files(sub: str):
    return sorted((PACKAGE / sub).rglob("*.py")) if (PACKAGE / sub).is_dir() else [PACKAGE / f"{sub}.py"]


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


RULES = [
    ("metrics", lambda name: _under(name, ["ssbench"]) and not _under(name, ["ssbench.metrics"]) and name != "ssbench"),
    ("datasets", lambda name: _under(name, ["ssbench.methods", "ssbench.engine", "ssbench.cli", "ssbench.report"])),
    ("methods", lambda name: _under(name, ["ssbench.cli", "ssbench.report"])),
]


@pytest.mark.parametrize("sub,forbidden", RULES, ids=[r[0] for r in RULES])
def test_package_import_rules(sub, forbidden):
    bad = {f"{path.relative_to(PACKAGE.parent)}: {name}" for path in _files(sub) for name in imports_of(path)
           if forbidden(name)}
    assert not bad, sorted(bad)


def test_only_the_sss_method_imports_sam2():
    sss = PACKAGE / "methods" / "sss"
    bad = {f"{path.relative_to(PACKAGE.parent)}: {name}" for path in PACKAGE.rglob("*.py")
           for name in imports_of(path) if _under(name, ["sam2", "training"]) and sss not in path.parents}
    assert not bad, sorted(bad)


def test_only_unimatch_v2_imports_timm_and_only_when_it_builds_its_network():
    """timm (UniMatch V2's ViT) is a dependency of one method: imported inside the function that builds it, so
    importing the method (or ssbench.api) never loads it."""
    v2 = PACKAGE / "methods" / "unimatch_v2"
    bad = {f"{path.relative_to(PACKAGE.parent)}: {name}" for path in PACKAGE.rglob("*.py")
           for name in imports_of(path) if _under(name, ["timm"]) and v2 not in path.parents}
    assert not bad, sorted(bad)
    top_level = {alias.name if isinstance(node, ast.Import) else node.module
                 for path in v2.rglob("*.py") for node in ast.parse(path.read_text()).body
                 if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    assert not any(_under(name or "", ["timm"]) for name in top_level), top_level
    assert any(_under(name, ["timm"]) for name in imports_of(v2 / "network.py"))  # the scan sees the lazy import


def test_the_scanner_sees_nested_and_relative_imports(tmp_path):
    pkg = PACKAGE / "metrics" / "__init__.py"
    assert "numpy" in imports_of(pkg)
    names = imports_of(PACKAGE / "engine" / "run.py")
    assert "ssbench.engine.evaluate" in names  # imported inside a function
    assert "ssbench.registry" in names or "ssbench" in names


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True, timeout=120,
                          env={"PYTHONPATH": str(PACKAGE.parent), "PATH": ""})
    return set(proc.stdout.split())


def test_at_run_time_metrics_and_datasets_load_alone():
    loaded = _modules_after("import ssbench.metrics, ssbench.metrics.evaluation, ssbench.metrics.surface")
    ours = {m for m in loaded if _under(m, ["ssbench"])}
    assert ours <= {"ssbench", "ssbench.metrics", "ssbench.metrics.evaluation", "ssbench.metrics.surface"}
    loaded = _modules_after("import ssbench.datasets.acdc, ssbench.datasets.bhsd, ssbench.datasets.nnunet, "
                            "ssbench.datasets.synthetic")
    assert not {m for m in loaded if _under(m, ["ssbench.methods", "ssbench.engine", "ssbench.cli", "ssbench.report"])}
    assert "torch" not in loaded and "sam2" not in loaded
