#!/usr/bin/env bash
# Installs the Python side of the interop tests (tests/interop.rs, tests/interop/*.py):
# a virtualenv with pinned pyzmq (libzmq) and msgpack from PyPI.
#
#   .ci/python-deps.sh                  # venv at target/venv
#   MLMESH_VENV=/some/dir .ci/python-deps.sh
#
# The interop tests then run target/venv/bin/python, or $MLMESH_PYTHON if set (point it
# at another interpreter that has these packages). Idempotent: a venv that already has
# the pinned versions is left alone, so CI can call this before every `cargo test`.
set -euo pipefail

PYZMQ_VERSION=27.3.0
MSGPACK_VERSION=1.2.4

cd "$(dirname "$0")/.."
VENV="${MLMESH_VENV:-target/venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    echo "python-deps: creating virtualenv at $VENV"
    python3 -m venv "$VENV"
fi

if "$PY" - "$PYZMQ_VERSION" "$MSGPACK_VERSION" <<'PYEOF' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(0 if (version("pyzmq"), version("msgpack")) == (sys.argv[1], sys.argv[2]) else 1)
PYEOF
    echo "python-deps: pyzmq==$PYZMQ_VERSION msgpack==$MSGPACK_VERSION already in $VENV"
    exit 0
fi

echo "python-deps: installing pyzmq==$PYZMQ_VERSION msgpack==$MSGPACK_VERSION into $VENV"
"$PY" -m pip install --quiet --disable-pip-version-check \
    "pyzmq==$PYZMQ_VERSION" "msgpack==$MSGPACK_VERSION"
"$PY" -c 'import zmq, msgpack; print("python-deps: libzmq", zmq.zmq_version(), "pyzmq", zmq.__version__, "msgpack", msgpack.version)'
