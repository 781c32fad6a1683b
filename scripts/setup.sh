#!/usr/bin/env bash
# Creates .venv (if missing or stale) with the tested set, then installs torchrec_fusion in it.
#   VARIANT=gpu bash scripts/setup.sh   installs fbgemm-gpu (CUDA) instead of fbgemm-gpu-cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANT=${VARIANT:-cpu}
PY=${PYTHON:-python3}
REQ=requirements/$VARIANT.txt
[ -f "$REQ" ] || { echo "setup: unknown VARIANT=$VARIANT (cpu or gpu)" >&2; exit 2; }
STAMP=.venv/.torchrec_fusion-$VARIANT-$(cat "$REQ" pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$REQ"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps torchrec==1.8.0
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python -c "import torchrec, fbgemm_gpu, torchrec_fusion; print('setup: torch', __import__('torch').__version__, '| torchrec', torchrec.__version__ if hasattr(torchrec, '__version__') else '1.8', '| torchrec_fusion', torchrec_fusion.__version__)"
rm -f .venv/.torchrec_fusion-*
touch "$STAMP"
