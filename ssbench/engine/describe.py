"""What a run would record, without running it: the resolved config (``ssbench config``) and its documented
fields — the ``--set`` keys with their defaults, what they allow and their help, built-ins and plugins alike."""

from __future__ import annotations

import dataclasses

from ssbench.fields import field_docs


def resolved_config(req):
    """The config ``execute(req)`` would save in config.yaml: its plan (``ssbench.engine.plan``), with the length
    in iterations the data give when the schedule is in epochs. Nothing is fetched."""
    from ssbench.engine.plan import plan
    from ssbench.engine.run import load_inputs

    p = plan(req)
    if p.cfg.train.schedule == "epochs":  # only then does the recorded config depend on the data's slice counts
        inputs = load_inputs(p.cfg, p.method_cls, p.dataset, p.split(), lambda *a, **k: None)
        p = p.with_schedule(inputs.pools)
    return p.cfg


def describe_fields(cfg) -> str:
    """One entry per field: ``section.key: value``, then its default, what it allows and its one-line help."""
    titles = {"data": "which data and split", "train": "the optimisation recipe and schedule",
              "eval": "the metric policy", cfg.data.dataset: f"options of the {cfg.data.dataset} loader",
              cfg.method_name: f"hyper-parameters of method {cfg.method_name} (alias: method.KEY)"}
    lines = []
    for name, section in cfg.sections().items():
        lines.append(f"[{name}] {titles[name]}")
        docs = field_docs(type(section))
        if not docs:
            lines.append("  (no fields)")
        for doc in docs:
            value = getattr(section, doc.name)
            default = "" if value == doc.default else f"; default {_text(doc.default)}"
            lines.append(f"  {name}.{doc.name}: {_text(value)}{default}  ({doc.allowed})")
            if doc.help:
                lines.append(f"      {doc.help}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        return type(value).__name__
    return str(value)
