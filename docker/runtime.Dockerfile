# The stage Jobs' image: `siked stage …` with CUDA PyTorch and vLLM (spec.sampling.backend: vllm).
#
#   docker build -f docker/runtime.Dockerfile -t ghcr.io/siked/siked:0.1.0 .
#
# PyTorch's wheels bring their own CUDA 13 libraries; the base image adds what the NVIDIA container
# runtime expects. vLLM 0.32.0 is built against torch 2.13.0, the version install.sh tests with.
# bitsandbytes is for student.finetune: qlora. Packing needs no FlashAttention: without it, transformers
# builds SDPA's block-diagonal mask from the packed position_ids (siked_runtime/training.py).
FROM nvidia/cuda:13.0.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/siked PATH=/opt/siked/bin:$PATH

# Triton (under vLLM and torch.compile) builds small C launchers at run time: it needs gcc and Python.h.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libseccomp2 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv "$VIRTUAL_ENV" \
 && useradd --uid 10001 --create-home siked

# The large layer first, so that a change to siked does not reinstall it.
RUN pip install torch==2.13.0 vllm==0.32.0 bitsandbytes==0.50.2

WORKDIR /src
COPY pyproject.toml README.md ./
COPY siked_runtime siked_runtime
COPY operator operator
COPY jobs jobs
RUN pip install ".[vllm]" torch==2.13.0 vllm==0.32.0 bitsandbytes==0.50.2 \
 && rm -rf /src

WORKDIR /home/siked
USER 10001:10001
CMD ["siked", "--help"]
