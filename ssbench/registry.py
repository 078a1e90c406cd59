"""Methods and datasets are found through entry points: ``ssbench.methods`` and ``ssbench.datasets``.

The built-ins are registered in ssbench's own pyproject.toml, exactly as a third-party package registers its
plugins, so there is no hand-kept list. A broken or duplicate entry point is a clear error naming it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ssbench.errors import UserError

METHODS_GROUP = "ssbench.methods"
DATASETS_GROUP = "ssbench.datasets"

# Top-level package of each loaded third-party plugin -> "method plugin 'echo' (echo_plugin:Echo, dist 0.1)".
_PLUGINS: dict[str, str] = {}


def _entries(group: str) -> dict:
    found: dict = {}
    for ep in entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            raise UserError(
                f"entry point group {group}: name {ep.name!r} is registered twice "
                f"({found[ep.name].value} and {ep.value})"
            )
        found[ep.name] = ep
    return found


def names(group: str) -> list[str]:
    return sorted(_entries(group))


def load(group: str, name: str):
    entries = _entries(group)
    kind = "method" if group == METHODS_GROUP else "dataset"
    if name not in entries:
        if not entries:
            raise UserError(f"no {kind}s are registered: is ssbench installed (pip install -e .)?")
        raise UserError(f"--{kind} {name}: unknown {kind} (available: {', '.join(sorted(entries))})")
    try:
        obj = entries[name].load()
    except Exception as exc:  # a plugin that fails to import must not take the CLI down with a traceback
        raise UserError(f"{kind} plugin {name!r} ({entries[name].value}) failed to load: {type(exc).__name__}: {exc}")
    if getattr(obj, "name", None) != name:
        raise UserError(f"{kind} plugin {entries[name].value} declares name {getattr(obj, 'name', None)!r}, "
                        f"registered as {name!r}")
    package = entries[name].module.split(".")[0]
    if package != "ssbench":
        dist = getattr(entries[name], "dist", None)
        origin = f", {dist.name} {dist.version}" if dist is not None else ""
        _PLUGINS[package] = f"{kind} plugin {name!r} ({entries[name].value}{origin})"
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
    """The distribution that registers ``name`` in ``group`` (recorded in run.json): name, version, entry point."""
    ep = _entries(group).get(name)
    if ep is None:
        return {}
    dist = getattr(ep, "dist", None)
    return {"distribution": dist.name if dist else None, "version": dist.version if dist else None,
            "entry_point": ep.value}
