#!/usr/bin/env bash
# Mutation testing of the code ssbench's numbers and guarantees rest on (issue 21): the metrics, the splits, the
# significance statistics, table pooling, checkpoint files and the resume path of the training loop. mutmut 3
# changes one operator, constant or call at a time ("a mutant") and runs the tests that reach the changed
# function; a mutant is killed when a test fails. Each module runs alone with a narrow, fast test selection, in a
# scratch copy of this working tree (the checkout is never touched). Prints killed / mutants per module and lists
# every surviving mutant; `mutmut show NAME` in the module's scratch folder shows its diff.
#
#   .venv/bin/pip install -e '.[test,mutation]'         # mutmut 3: a tool, not a dependency of ssbench
#   OMP_NUM_THREADS=1 benchmarks/mutation.sh [MODULE ...]  # default: every module below, one after the other
#
# MODULE: metrics, metrics.surface, metrics.evaluation, splits, report.stats, report.pooling, engine.checkpoint,
# engine.train-resume. WORK (default /tmp/ssbench-mutation) holds the scratch copies; the summary goes to
# $WORK/summary.txt. One worker process (--max-children 1): others may share the machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-/tmp/ssbench-mutation}
python=${PYTHON:-$repo/.venv/bin/python}
mutmut="$(dirname "$python")/mutmut"
[ -x "$mutmut" ] || { echo "mutation.sh: $mutmut not found: $(dirname "$python")/pip install -e '.[test,mutation]'" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# module -> "file|pytest arguments" (the narrow selection whose tests can kill its mutants)
declare -A MODULES=(
  [metrics]="ssbench/metrics/__init__.py|tests/metrics/test_metrics.py"
  [metrics.surface]="ssbench/metrics/surface.py|tests/metrics/test_metrics.py"
  [metrics.evaluation]="ssbench/metrics/evaluation.py|tests/metrics/test_metrics.py"
  [splits]="ssbench/splits.py|tests/data/test_splits.py tests/data/test_datasets.py"
  [report.stats]="ssbench/report/stats.py|tests/report/test_report_stats.py tests/report/test_holm.py"
  [report.pooling]="ssbench/report/pooling.py|tests/report/test_pooling_units.py"
  [engine.checkpoint]="ssbench/engine/checkpoint.py|tests/engine/test_resume.py tests/engine/test_gpu_paths.py::test_a_checkpoint_resumes_on_another_device_than_the_one_that_wrote_it"
  [engine.train-resume]="ssbench/engine/train.py|tests/engine/test_resume.py"
)
ORDER=(metrics metrics.surface metrics.evaluation splits report.stats report.pooling engine.checkpoint
       engine.train-resume)
[ $# -gt 0 ] && ORDER=("$@")

mkdir -p "$work"
: > "$work/summary.txt"
for module in "${ORDER[@]}"; do
  spec=${MODULES[$module]:-}
  [ -n "$spec" ] || { echo "mutation.sh: unknown module $module (known: ${!MODULES[*]})" >&2; exit 2; }
  file=${spec%%|*}
  tests=${spec#*|}
  dir="$work/$module"
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$repo" && git ls-files -co --exclude-standard | tar -T - -cf -) | tar -xf - -C "$dir"
  if [ "$module" = engine.train-resume ]; then
    # only the resume path of train.py: restore_training_state, _restore_best, and in train() the resume branch,
    # the checkpoint condition and the checkpoint write; every other line carries mutmut's no-mutate pragma
    "$python" - "$dir/$file" <<'EOF'
import ast, sys
path = sys.argv[1]
lines = open(path).read().split("\n")
keep = set()
for node in ast.parse("\n".join(lines)).body:
    if isinstance(node, ast.FunctionDef) and node.name in ("restore_training_state", "_restore_best"):
        keep.update(range(node.lineno, node.end_lineno + 1))
    if isinstance(node, ast.FunctionDef) and node.name == "train":
        for sub in ast.walk(node):
            text = ast.unparse(sub.test) if isinstance(sub, ast.If) else ""
            if isinstance(sub, ast.If) and (text.startswith("resume") or text == "save_state"):
                keep.update(range(sub.lineno, sub.end_lineno + 1))
            if isinstance(sub, ast.Assign) and ast.unparse(sub.targets[0]) in ("save_state", "last"):
                keep.update(range(sub.lineno, sub.end_lineno + 1))
with open(path, "w") as f:
    f.write("\n".join(line if i in keep or not line.strip() else line + "  # pragma: no mutate"
                      for i, line in enumerate(lines, 1)))
EOF
  fi
  {
    printf '\n[tool.mutmut]\nsource_paths = ["ssbench"]\nonly_mutate = ["%s"]\n' "$file"
    printf 'pytest_add_cli_args_test_selection = [%s]\n' "$(printf '"%s", ' $tests)"
    printf 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\nprocess_isolation = "forkserver"\n'
  } >> "$dir/pyproject.toml"
  echo "== $module: $file, tests: $tests" >&2
  (cd "$dir" && "$mutmut" run --max-children 1 > run.log 2>&1) || echo "mutation.sh: mutmut failed on $module, see $dir/run.log" >&2
  (cd "$dir" && "$mutmut" results --all true > results.txt 2>&1) || true
  # train.py: only the resume path's functions count (mutmut also mutates other functions' signatures)
  only=$([ "$module" = engine.train-resume ] && echo 'x_train__|x_restore_training_state__|x__restore_best__' || echo .)
  (cd "$dir" && "$python" - "$module" "$dir/results.txt" "$only" "$mutmut" <<'EOF') | tee -a "$work/summary.txt"
import collections, re, subprocess, sys
module, path, only, mutmut = sys.argv[1:]
status = {}
for line in open(path):
    name, sep, verdict = line.strip().rpartition(": ")
    if sep and "__mutmut_" in name and re.search(only, name):
        status[name] = verdict
if only != ".":  # a line-limited module: a mutant on a line that carries the no-mutate pragma is outside it
    for name in list(status):
        diff = subprocess.run([mutmut, "show", name], capture_output=True, text=True).stdout.splitlines()
        if any(l.startswith("+ ") and "pragma: no mutate" in l for l in diff):
            del status[name]
counts = collections.Counter(status.values())
killed = counts["killed"] + counts["timeout"]
total = len(status)
print(f"{module}: {killed}/{total} killed ({100 * killed / max(total, 1):.1f}%)  "
      + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
for name, verdict in sorted(status.items()):
    if verdict not in ("killed", "timeout"):
        print(f"    {verdict}: {name}")
EOF
done
