#!/usr/bin/env bash
# Download, on this machine, the wheels the lent GPU machine lacks, into .whl/ (git-ignored), for
# scripts/lab/device_run.sh to install there. That machine has python 3.12, torch (CUDA),
# transformers, peft, pillow, pytest and requests, and no network; see ../.library/device/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
# The project's pins (requirements.txt) and what they pull in that the device image does not hold.
WHEELS=(diffusers==0.42.1 cog==0.23.1 coglet==0.23.1 open-clip-torch==3.3.0 structlog==26.1.0 importlib_metadata==10.2.0)
rm -rf .whl && mkdir -p .whl
platforms=()
for n in 2_28 2_27 2_17 2_24 2_31 2_34 2_35; do platforms+=(--platform "manylinux_${n}_x86_64"); done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -la .whl
