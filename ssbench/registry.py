"""Methods and datasets are found through entry points: ``ssbench.methods`` and ``ssbench.datasets``.

The built-ins are registered in ssbench's own pyproject.toml, exactly as a third-party package registers its
plugins, so there is no hand-kept list. Besides installed packages, ``--plugin module:attr`` or ``--plugin file.py``
registers a method or dataset for one command, and ``SSBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` ignores every installed
plugin (the built-ins and ``--plugin``s stay).

A broken plugin never takes the others down: listing reads names, distributions and descriptions without importing
anything (``ssbench methods`` does not import torch), and each failure — an import error, an object that is not a
method or dataset, another Method API version, a name two distributions claim — is one line naming the plugin and
its distribution, raised only when that plugin is used.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from ssbench.errors import UserError, first_line

METHODS_GROUP = "ssbench.methods"
DATASETS_GROUP = "ssbench.datasets"
AUTOLOAD_ENV = "SSBENCH_DISABLE_PLUGIN_AUTOLOAD"
_KIND = {METHODS_GROUP: "method", DATASETS_GROUP: "dataset"}

# Top-level package of each loaded third-party plugin -> "method plugin 'echo' (echo_plugin:Echo, dist 0.1)".
_PLUGINS: dict[str, str] = {}
# Objects registered by --plugin, per group: name -> Registration.
_EXTRA: dict[str, dict[str, "Registration"]] = {METHODS_GROUP: {}, DATASETS_GROUP: {}}


@dataclass
class Registration:
    """One registration of a name: where it points (``module:attr``) and who registers it."""

    name: str
    value: str
    distribution: str | None = None
    version: str | None = None
    plugin: str | None = None  # the --plugin argument, for objects registered that way
    obj: object = None  # set once loaded (at once for --plugin)
    rivals: list["Registration"] = field(default_factory=list)  # other distributions claiming the same name

    @property
    def builtin(self) -> bool:
        return self.value.split(":")[0].split(".")[0] == "ssbench" and self.plugin is None

    def origin(self) -> str:
        if self.plugin is not None:
            return f"--plugin {self.plugin}"
        return f"{self.distribution or 'unknown distribution'} {self.version or ''}".strip()

    def describe(self, kind: str) -> str:
        return f"{kind} plugin {self.name!r} ({self.value}, {self.origin()})"


def autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip() not in ("", "0")


def _entries(group: str) -> dict[str, Registration]:
    found: dict[str, Registration] = {}
    disabled = autoload_disabled()
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        entry = Registration(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None)
        if disabled and not entry.builtin:
            continue
        if ep.name not in found:
            found[ep.name] = entry
        elif found[ep.name].value != ep.value or found[ep.name].distribution != entry.distribution:
            found[ep.name].rivals.append(entry)
        # else: the same distribution seen twice on sys.path (e.g. an editable install and a build folder)
    for name, entry in _EXTRA[group].items():
        if name not in found:
            found[name] = entry
        elif found[name].value != entry.value:  # --plugin naming the installed class itself is the same registration
            found[name].rivals.append(entry)
    return found


def names(group: str) -> list[str]:
    return sorted(_entries(group))


def entries(group: str) -> list[Registration]:
    """Every registration of the group, sorted by name, none imported."""
    return [e for _, e in sorted(_entries(group).items())]


def load(group: str, name: str):
    registered = _entries(group)
    kind = _KIND[group]
    if name not in registered:
        if not registered:
            raise UserError(f"no {kind}s are registered: is ssbench installed (pip install -e .)?")
        hint = f" ({AUTOLOAD_ENV} is set: installed plugins are not loaded)" if autoload_disabled() else ""
        raise UserError(f"--{kind} {name}: unknown {kind} (available: {', '.join(sorted(registered))}){hint}")
    entry = registered[name]
    if entry.rivals:
        claims = "; ".join(f"{e.value} from {e.origin()}" for e in [entry, *entry.rivals])
        raise UserError(f"{kind} {name!r} is claimed more than once ({claims}): uninstall one, or rename its "
                        f"entry point")
    if entry.obj is None:
        try:
            obj = _resolve(entry.value)
        except Exception as exc:  # a plugin that fails to import must not take the CLI down with a traceback
            raise UserError(f"{entry.describe(kind)} failed to load: {type(exc).__name__}: {first_line(exc)}") \
                from None
        _check(group, entry, obj)
        entry.obj = obj
    if not entry.builtin:
        _PLUGINS[entry.value.split(":")[0].split(".")[0]] = entry.describe(kind)
    return entry.obj


# A registered name becomes a results folder (results/<dataset>/<method>/...): letters, digits, '.', '_', '-',
# starting with a letter or digit, so that no name ('../../x', 'a/b', '.hidden') can write outside --out.
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check(group: str, entry: Registration, obj) -> None:
    """A plugin must be a Method (or Dataset) subclass of this Method API version, named as it is registered,
    with a name that is a plain folder name."""
    kind = _KIND[group]
    if not FOLDER_NAME.fullmatch(entry.name) or ".." in entry.name:
        raise UserError(f"{entry.describe(kind)}: the name {entry.name!r} is not a plain folder name (letters, "
                        "digits, '.', '_', '-'; it names the results folder)")
    if group == METHODS_GROUP:
        from ssbench.methods.api import API_VERSION, Method as base
    else:
        from ssbench.datasets.base import Dataset as base

        API_VERSION = None
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise UserError(f"{entry.describe(kind)} is not a valid {kind}: {entry.value} is "
                        f"{'class ' + obj.__name__ if isinstance(obj, type) else type(obj).__name__}, not a subclass "
                        f"of ssbench.api.{base.__name__}")
    if API_VERSION is not None and getattr(obj, "api_version", None) != API_VERSION:
        raise UserError(f"{entry.describe(kind)} declares Method API version {getattr(obj, 'api_version', None)}; "
                        f"this ssbench provides version {API_VERSION} (upgrade the plugin or ssbench)")
    if getattr(obj, "name", None) != entry.name:
        raise UserError(f"{entry.describe(kind)} declares name {getattr(obj, 'name', None)!r}, registered as "
                        f"{entry.name!r} (the entry-point name must equal the class's name)")


def add_plugin(spec: str) -> list[str]:
    """``--plugin module:attr`` or ``--plugin path/to/file.py``: register the Method and Dataset classes it names
    (a file: every one it defines) for this process. Returns 'method NAME' / 'dataset NAME' for each."""
    from ssbench.datasets.base import Dataset
    from ssbench.methods.api import Method

    candidates = _import_plugin(spec)
    added = []
    for value, obj in candidates:
        for group, base in ((METHODS_GROUP, Method), (DATASETS_GROUP, Dataset)):
            if isinstance(obj, type) and issubclass(obj, base) and obj is not base:
                name = getattr(obj, "name", None)
                if not isinstance(name, str) or not name:
                    raise UserError(f"--plugin {spec}: {value} has no name (set the class attribute `name`)")
                entry = Registration(name, value, plugin=spec)
                _check(group, entry, obj)
                entry.obj = obj
                _EXTRA[group][name] = entry
                _PLUGINS[value.split(":")[0].split(".")[0]] = entry.describe(_KIND[group])
                added.append(f"{_KIND[group]} {name}")
    if not added:
        raise UserError(f"--plugin {spec}: defines no ssbench Method or Dataset subclass")
    return added


def _import_plugin(spec: str) -> list[tuple[str, object]]:
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise UserError(f"--plugin {spec}: no such file")
        module_name = f"ssbench_plugin_{path.stem}"
        try:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise UserError(f"--plugin {spec}: failed to import: {type(exc).__name__}: {first_line(exc)}") from None
        # the classes the file defines itself (not those it imports, such as a built-in it subclasses)
        return [(f"{module_name}:{k}", v) for k, v in vars(module).items()
                if isinstance(v, type) and v.__module__ == module_name]
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise UserError(f"--plugin {spec}: expected module:attr or a path to a .py file")
    try:
        obj = _resolve(spec)
    except Exception as exc:
        raise UserError(f"--plugin {spec}: failed to import: {type(exc).__name__}: {first_line(exc)}") from None
    return [(spec, obj)]


def _resolve(value: str):
    """The object an entry-point value ``module:attr.path`` names (importing the module)."""
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def plugin_of(exc: BaseException) -> str | None:
    """The loaded plugin whose code the traceback of ``exc`` (or of the exceptions it chains) passes through, if
    any: a plain exception there is the plugin's failure, reported on one line naming it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        found = None
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            found = _PLUGINS.get(module.split(".")[0], found)
            tb = tb.tb_next
        if found:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


def method(name: str):
    return load(METHODS_GROUP, name)


def dataset(name: str):
    return load(DATASETS_GROUP, name)


def source(group: str, name: str) -> dict:
    """Who registers ``name`` in ``group`` (recorded in run.json): distribution, version, entry point, --plugin."""
    entry = _entries(group).get(name)
    if entry is None:
        return {}
    out = {"distribution": entry.distribution, "version": entry.version, "entry_point": entry.value}
    if entry.plugin is not None:
        out["plugin"] = entry.plugin
    return out


def description(entry: Registration) -> str:
    """The first line of the registered class's docstring (else its module's), read from the source file without
    importing it: listing the methods stays fast and survives plugins that fail to import."""
    if entry.obj is not None:
        doc = entry.obj.__dict__.get("__doc__") or sys.modules[entry.obj.__module__].__doc__ or ""
        return _first_line_of(doc)
    module, _, attr = entry.value.partition(":")
    path = _source_file(module)
    if path is None:
        return ""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == attr.split(".")[0]:
            doc = ast.get_docstring(node)
            if doc:
                return _first_line_of(doc)
    return _first_line_of(ast.get_docstring(tree) or "")


def _source_file(module: str) -> Path | None:
    """The .py file of a dotted module name, found by walking the package folders (finding the spec of a submodule
    would import its parent packages, and with them torch)."""
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if len(parts) == 1:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for root in spec.submodule_search_locations or ():
        here = Path(root)
        for part in parts[1:-1]:
            here = here / part
        for candidate in (here / f"{parts[-1]}.py", here / parts[-1] / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _first_line_of(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]

