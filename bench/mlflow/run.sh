#!/usr/bin/env bash
# Tracking benchmark: mlmesh's experiment tracker against MLflow, on this machine.
#
#   bash bench/mlflow/run.sh [--quick]
#
# 1. Makes (or reuses) a virtualenv at target/mlflow-venv with the MLflow pinned in
#    bench/mlflow/requirements.txt. Installing NEEDS NETWORK ACCESS TO PyPI (once).
# 2. Runs bench/mlflow/mlflow_bench.py: MLflow with a tracking server on SQLite
#    ("mlflow-server") and with the client writing SQLite itself ("mlflow-direct").
# 3. Runs the mlmesh side, `cargo bench -p mlmesh-nodes --bench tracking -- --json`,
#    if that bench target exists (skipped, with a note, if not).
# 4. Prints a comparison table (mlmesh / mlflow-server and mlmesh / mlflow-direct).
#
# --quick shrinks every count for a smoke test (about 15 s for the MLflow half); it is
# passed to mlflow_bench.py, and to the mlmesh bench as MLMESH_BENCH_QUICK=1.
# JSON lines and logs go to target/mlflow-bench/<UTC time>/.
# Only 127.0.0.1 is contacted while benchmarking. Not run in CI (it needs PyPI and
# takes minutes).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument: $arg (only --quick)" >&2; exit 2 ;;
    esac
done

REQ="bench/mlflow/requirements.txt"
VENV="target/mlflow-venv"
PY="$VENV/bin/python"
OUT="target/mlflow-bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

# Exit 0 if the venv has every `name==version` pinned in requirements.txt.
venv_ok() {
    [ -x "$PY" ] || return 1
    "$PY" - "$REQ" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if "==" not in line:
        continue
    name, want = (s.strip() for s in line.split("==", 1))
    try:
        have = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if have != want:
        sys.exit(1)
EOF
}

if venv_ok; then
    echo "== reusing $VENV" >&2
else
    echo "== installing $REQ into $VENV (from PyPI)" >&2
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -r "$REQ"
    venv_ok || { echo "run.sh: $VENV still lacks the pinned versions" >&2; exit 1; }
fi

echo "== load before: $(uptime)" >&2

# ---- MLflow -------------------------------------------------------------------------
MLFLOW_ARGS=()
[ "$QUICK" = 1 ] && MLFLOW_ARGS+=(--quick)
echo "== MLflow: $PY bench/mlflow/mlflow_bench.py ${MLFLOW_ARGS[*]}" >&2
"$PY" bench/mlflow/mlflow_bench.py "${MLFLOW_ARGS[@]}" > "$OUT/mlflow.jsonl"

# ---- mlmesh -------------------------------------------------------------------------
MLMESH_STATUS="ran"
has_bench_target() {
    cargo metadata --no-deps --format-version 1 2>/dev/null | "$PY" -c '
import json, sys
meta = json.load(sys.stdin)
sys.exit(0 if any(
    p["name"] == "mlmesh-nodes" and t["name"] == "tracking" and "bench" in t["kind"]
    for p in meta["packages"] for t in p["targets"]) else 1)'
}
: > "$OUT/mlmesh.jsonl"
if has_bench_target; then
    echo "== mlmesh: cargo bench -p mlmesh-nodes --bench tracking -- --json" >&2
    if MLMESH_BENCH_QUICK="$QUICK" cargo bench -p mlmesh-nodes --bench tracking -- --json \
        > "$OUT/mlmesh.out"; then
        # Keep only the JSON measurement lines (a table may be printed too).
        grep -E '^\{.*"system"' "$OUT/mlmesh.out" > "$OUT/mlmesh.jsonl" || true
        [ -s "$OUT/mlmesh.jsonl" ] || MLMESH_STATUS="printed no JSON lines"
    else
        MLMESH_STATUS="failed (exit $?), see $OUT/mlmesh.out"
    fi
else
    MLMESH_STATUS="skipped: no bench target 'tracking' in mlmesh-nodes yet"
fi
echo "== mlmesh: $MLMESH_STATUS" >&2
echo "== load after: $(uptime)" >&2

# ---- comparison ---------------------------------------------------------------------
"$PY" - "$OUT/mlmesh.jsonl" "$OUT/mlflow.jsonl" <<'EOF'
import json, statistics, sys

recs = []
for path in sys.argv[1:]:
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass

TIME = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
SYSTEMS = ["mlmesh", "mlflow-server", "mlflow-direct"]
cases, vals = [], {}
for r in recs:
    if r.get("system") not in SYSTEMS:
        continue
    if r["case"] not in cases:
        cases.append(r["case"])
    vals.setdefault((r["system"], r["case"]), []).append((float(r["value"]), r["unit"]))

def get(system, case):
    v = vals.get((system, case))
    if not v:
        return None
    return statistics.median(x for x, _ in v), v[0][1]  # median over repeated trials

def fmt(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

def ratio(a, b):
    if not a or not b:
        return "-"
    (va, ua), (vb, ub) = a, b
    if ua in TIME and ub in TIME:
        q = (va * TIME[ua]) / (vb * TIME[ub])
        return f"{q:.3g}x ({'faster' if q < 1 else 'slower'})"
    if ua != ub:
        return f"units differ ({ua} vs {ub})"
    q = va / vb
    return f"{q:.3g}x ({'faster' if q > 1 else 'slower'})"

head = ["case", *SYSTEMS, "mlmesh / server", "mlmesh / direct"]
rows = [head]
for c in cases:
    cells = [get(s, c) for s in SYSTEMS]
    rows.append([c, *(f"{fmt(x[0])} {x[1]}" if x else "-" for x in cells),
                 ratio(cells[0], cells[1]), ratio(cells[0], cells[2])])
w = [max(len(r[i]) for r in rows) for i in range(len(head))]
print()
print("| " + " | ".join(c.ljust(x) for c, x in zip(head, w)) + " |")
print("|" + "|".join("-" * (x + 2) for x in w) + "|")
for r in rows[1:]:
    print("| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |")
print("\nRatios are mlmesh's value over MLflow's: for /s units higher is better, for "
      "latencies lower; 'faster' means mlmesh is.")
EOF
echo "Results: $OUT (mlmesh: $MLMESH_STATUS)"
case "$MLMESH_STATUS" in failed*) exit 1 ;; esac
