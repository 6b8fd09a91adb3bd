#!/usr/bin/env bash
# Create .venv in the repository root and install the pinned dependencies (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
# Only for the CLIP BPE vocabulary that scripts/make_random_weights.py builds tokenizers from;
# --no-deps because its torchvision dependency breaks beside the CPU torch build.
.venv/bin/python -m pip install --quiet --no-deps open-clip-torch==3.3.0
# The playground's (scripts/playground.py), kept out of the server's image: --no-deps because gradio
# caps pillow below the 13.0.0 the server pins; requirements-playground.txt pins all it needs.
.venv/bin/python -m pip install --quiet --no-deps -r requirements-playground.txt
