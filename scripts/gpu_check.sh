#!/usr/bin/env bash
# The GPU acceptance in one command (issue 22; docs/DEPLOY.md, "The first run on a GPU").
#
#   scripts/gpu_check.sh [--out DIR] [--epochs N] [--iters N] [--precision P ...] [--batch B ...]
#
# Makes data, trains the tiny preset on the GPU, exports, benches and verifies every path this machine
# has; writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: gpu_check_out) and prints the table.
# Rows this machine cannot run (no GPU, no onnxruntime-gpu, no TensorRT) are skipped with the reason.
# Exit 1 when a row failed. Needs the train extra (torch); `--help` lists every option.
# Python: $PYTHON, else the checkout's .venv, else python3 on PATH.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
exec env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$here/gpu_check.py" "$@"
