"""Which runs share a table, a row and a cell.

- A table holds one dataset under one metric policy (empty-mask policy, HD units, surface connectivity).
- A row holds the runs of one method whose recorded settings agree: every config field except the seed, the data
  root and the spelling of the split (``collect.NOT_COMPARED``). The table's main protocol is model selection on
  val with the inference resize most of its val-selected runs use; per method, the main-protocol settings group
  with the most runs is the method's row in the main table. Every other group (another selection, another
  inference resize, other training settings) gets its own row, named by what differs, in the table of other
  protocols: it never blocks, and never pools with, the main rows.
- A cell is a row at one labeled count; it holds one run per seed. The same seed run twice under two spellings
  of the split (``--split 7`` and ``--split 10%``) counts once: the first folder (path order) is used, the other
  is named as ignored.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ssbench.report.collect import Run

MAIN_SELECTION = "val"
DEFAULT_POLICY = ("worst", 1)  # empty-mask policy and connectivity of the benchmark's default metric policy


@dataclass
class Duplicate:
    used: Run
    ignored: Run

    @property
    def reason(self) -> str:
        return (f"seed {self.used.seed} is already counted from {self.used.path} (the same settings; split spelled "
                f"{self.used.split!r} there, {self.ignored.split!r} here)")


@dataclass(eq=False)  # rows are compared and hashed by identity
class PooledRow:
    label: str
    method: str  # the method folder name, e.g. 'unimatch' or 'sss@dfe=false'
    display: str  # the method's display name
    role: str  # 'baseline' (labeled only), 'method' (semi-supervised) or 'upper' (every patient labeled)
    settings: dict  # what its runs agree on
    cells: dict[int, list[Run]] = field(default_factory=dict)  # labeled -> one run per seed
    differs: dict = field(default_factory=dict)  # key -> (this row's value, the main row's value)
    main: bool = True

    @property
    def runs(self) -> list[Run]:
        return [r for n in sorted(self.cells) for r in self.cells[n]]


@dataclass
class Layout:
    """One table family: a dataset under one metric policy."""

    dataset: str
    policy: tuple  # (empty, hd_units, connectivity)
    tag: str  # '' for the dataset's default policy, else e.g. 'legacy-zero-voxel-c1' (names the files)
    main_protocol: dict
    rows: list[PooledRow]  # main rows first (baseline, methods, upper bound), then the other rows
    duplicates: list[Duplicate]

    @property
    def main_rows(self) -> list[PooledRow]:
        return [r for r in self.rows if r.main]

    @property
    def other_rows(self) -> list[PooledRow]:
        return [r for r in self.rows if not r.main]

    @property
    def stem(self) -> str:
        return self.dataset + (f"_{self.tag}" if self.tag else "")

    @property
    def units(self) -> str:
        return self.policy[1]

    def splits(self, rows: list[PooledRow] | None = None) -> list[int]:
        """Labeled counts of the column groups (the upper bound's 'all' is a row, never a column)."""
        rows = self.main_rows if rows is None else rows
        return sorted({n for r in rows if r.role != "upper" for n in r.cells})

    def split_label(self, labeled: int) -> str:
        spelled = sorted({r.split for row in self.rows for r in row.runs if r.labeled == labeled
                          and r.split.endswith("%")})
        return f"{labeled} labeled" + (f" ({spelled[0]})" if spelled else "")


def layouts(runs: list[Run]) -> list[Layout]:
    by_table: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        by_table[(r.dataset, r.policy)].append(r)
    out = []
    for dataset in sorted({d for d, _ in by_table}):
        policies = [p for d, p in by_table if d == dataset]
        default = _default_policy(policies)
        for policy in sorted(policies, key=lambda p: (p != default, str(p))):
            tag = "" if policy == default else f"{policy[0]}-{policy[1]}-c{policy[2]}"
            out.append(_layout(dataset, policy, tag, by_table[(dataset, policy)]))
    return out


def _default_policy(policies: list[tuple]) -> tuple:
    """The benchmark default (worst, connectivity 1; mm before voxels) when present, else the first."""
    ranked = sorted(policies, key=lambda p: ((p[0], p[2]) != DEFAULT_POLICY, p[1] != "mm", str(p)))
    return ranked[0]


def signature(settings: dict) -> tuple:
    return tuple(sorted(((k, v) for k, v in settings.items()), key=lambda kv: kv[0]))


def _layout(dataset: str, policy: tuple, tag: str, runs: list[Run]) -> Layout:
    val_runs = [r for r in runs if r.selection == MAIN_SELECTION]
    resize_counts = Counter(r.inference_resize for r in val_runs)
    main_resize = max(sorted(resize_counts), key=lambda k: (resize_counts[k], k == "order0")) if val_runs \
        else "order0"
    main_protocol = {"selection": MAIN_SELECTION, "inference_resize": main_resize}

    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: str(r.path)):
        groups[(r.method, r.full, signature(r.settings))].append(r)

    rows, duplicates = [], []
    for (method, full) in sorted({(m, f) for m, f, _ in groups}):
        mine = {sig: rs for (m, f, sig), rs in groups.items() if m == method and f == full}
        honest = [sig for sig, rs in mine.items() if _on_protocol(rs[0], main_protocol)]
        primary = max(honest, key=lambda s: (len(mine[s]), mine[s][0].iterations or 0, str(s)), default=None)
        for sig in sorted(mine, key=lambda s: (s != primary, str(s))):
            rs = mine[sig]
            first = rs[0]
            role = "upper" if full else ("baseline" if first.labeled_only else "method")
            row = PooledRow(label="", method=method, display=first.display_name, role=role, settings=dict(sig),
                      main=sig == primary)
            for r in rs:
                cell = row.cells.setdefault(r.labeled, [])
                twin = next((c for c in cell if c.seed == r.seed), None)
                if twin is None:
                    cell.append(r)
                else:
                    duplicates.append(Duplicate(twin, r))
            for cell in row.cells.values():
                cell.sort(key=lambda r: r.seed)
            if not row.main:
                reference = dict(primary) if primary is not None else {**first.settings, **{
                    "train.selection": MAIN_SELECTION, "data.inference_resize": main_resize}}
                row.differs = differences(row.settings, reference)
            row.label = _label(row)
            rows.append(row)
    order = {"baseline": 0, "method": 1, "upper": 2}
    rows.sort(key=lambda r: (not r.main, order[r.role] if r.main else 0, r.display.lower(), r.method, r.label))
    _unique_labels(rows)
    return Layout(dataset, policy, tag, main_protocol, rows, duplicates)


def _on_protocol(run: Run, protocol: dict) -> bool:
    return run.selection == protocol["selection"] and run.inference_resize == protocol["inference_resize"]


MISSING = "not recorded"


def differences(settings: dict, reference: dict) -> dict:
    keys = sorted(set(settings) | set(reference))
    return {k: (settings.get(k, MISSING), reference.get(k, MISSING)) for k in keys
            if settings.get(k, MISSING) != reference.get(k, MISSING)}


def describe(key: str, value) -> str:
    """A difference in words, as a row name carries it: 'legacy val+test selection', 'train.iters=200'."""
    if key == "train.selection":
        return "legacy val+test selection" if value == "legacy-val+test" else f"{value} selection"
    if key == "data.inference_resize":
        return f"{'order-0' if value == 'order0' else value} inference"
    if key == "data.train_resize":
        return f"{'order-0' if value == 'order0' else value} train resize"
    if isinstance(value, tuple):
        value = ",".join(map(str, value))
    return f"{key}={value}"


# Protocol differences name a row first; then the training settings, in this order.
_PRIORITY = ("train.selection", "data.inference_resize", "data.train_resize", "train.schedule", "train.iters",
             "train.epochs")


def _label(row: PooledRow) -> str:
    base = row.display + (f", all {max(row.cells)} labeled" if row.role == "upper" else "")
    if row.main or not row.differs:
        return base
    keys = sorted(row.differs, key=lambda k: (_PRIORITY.index(k) if k in _PRIORITY else len(_PRIORITY), k))
    parts = [describe(k, row.differs[k][0]) for k in keys]
    return f"{base} ({', '.join(parts[:2])}" + (f", +{len(parts) - 2} more)" if len(parts) > 2 else ")")


def _unique_labels(rows: list[PooledRow]) -> None:
    seen: Counter = Counter()
    for r in rows:
        seen[r.label] += 1
        if seen[r.label] > 1:
            r.label += f" [{seen[r.label]}]"
