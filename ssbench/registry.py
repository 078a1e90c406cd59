"""Methods and datasets are found through entry points: ``ssbench.methods`` and ``ssbench.datasets``.

The built-ins are registered in ssbench's own pyproject.toml, exactly as a third-party package registers its
plugins, so there is no hand-kept list. A broken or duplicate entry point is a clear error naming it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ssbench.errors import UserError

METHODS_GROUP = "ssbench.methods"
DATASETS_GROUP = "ssbench.datasets"


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
    return obj


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
