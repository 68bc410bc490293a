#!/usr/bin/env bash
# Set up a virtual environment with medseg, the real sam2 package and the test tools.
#
#   bash scripts/setup.sh            # creates ./.venv
#   VENV=/path/to/env bash scripts/setup.sh
#
# Order matters: sam2 1.1.0 declares torchvision as a dependency, which would pull a CUDA
# build of torch of several GB; medseg only uses sam2's video predictor, which never imports
# torchvision. So torch is installed first (an existing one is kept; else $MEDSEG_TORCH),
# then sam2's real runtime needs, then sam2 itself without dependencies, then medseg.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

pip_install --upgrade pip setuptools wheel
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || pip_install tomli
"$PY" -c 'import torch' 2>/dev/null || pip_install "${MEDSEG_TORCH:-torch==2.13.0}"
pip_install "hydra-core>=1.3.2" "iopath>=0.1.10" pillow "tqdm>=4.66"
if ! "$PY" -m pip show -q sam2 >/dev/null 2>&1; then
  SAM2_BUILD_CUDA=0 pip_install --no-deps --no-build-isolation "sam2==1.1.0"
fi
pip_install --no-deps -e .
mapfile -t REQS < <("$PY" scripts/requirements.py --extra dev --exclude sam2 --exclude torch)
pip_install "${REQS[@]}"
"$VENV/bin/medseg" --version
