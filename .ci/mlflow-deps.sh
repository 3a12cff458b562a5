#!/usr/bin/env bash
# Installs MLflow for the MLflow adapter's tests (nodes/tests/mlflow.rs) and the bench
# (bench/mlflow/run.sh): a virtualenv with the MLflow pinned in
# bench/mlflow/requirements.txt, from PyPI.
#
#   .ci/mlflow-deps.sh                       # venv at target/mlflow-venv
#   MLMESH_MLFLOW_VENV=/some/dir .ci/mlflow-deps.sh
#
# The tests run $MLMESH_MLFLOW_VENV/bin/mlflow (default target/mlflow-venv) and fail,
# saying to run this script, when it is missing. Idempotent: a venv that already has
# every pinned version is left alone (about 30 s to install otherwise).
set -euo pipefail

cd "$(dirname "$0")/.."
REQ=bench/mlflow/requirements.txt
VENV="${MLMESH_MLFLOW_VENV:-target/mlflow-venv}"
PY="$VENV/bin/python"

# Exit 0 if the venv has every `name==version` of the requirements.
pinned() {
    [ -x "$PY" ] || return 1
    "$PY" - "$REQ" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if "==" not in line:
        continue
    name, want = (s.strip() for s in line.split("==", 1))
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYEOF
}

if pinned; then
    echo "mlflow-deps: $(grep -E '^mlflow==' "$REQ") already in $VENV"
    exit 0
fi
if [ ! -x "$PY" ]; then
    echo "mlflow-deps: creating virtualenv at $VENV"
    python3 -m venv "$VENV"
fi
echo "mlflow-deps: installing $REQ into $VENV"
"$PY" -m pip install --quiet --disable-pip-version-check -r "$REQ"
pinned || { echo "mlflow-deps: $VENV still lacks the pinned versions" >&2; exit 1; }
"$PY" -c 'import mlflow; print("mlflow-deps: mlflow", mlflow.__version__)'
