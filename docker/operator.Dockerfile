# The operator's image: `siked-operator` and the parts of siked it imports; no PyTorch, no GPU.
#
#   docker build -f docker/operator.Dockerfile -t ghcr.io/siked/siked-operator:0.1.0 .
#
# siked goes in without its dependencies (the ML stack is for stage Jobs); the operator's are pinned
# here to versions within pyproject.toml's ranges (tests/test_docker.py checks both).
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY siked_runtime siked_runtime
COPY operator operator
COPY jobs jobs
RUN pip install --no-deps . \
 && pip install pydantic==2.14.3 pyyaml==6.0.3 boto3==1.44.5 \
        kopf==1.45.2 kubernetes==37.0.1 prometheus-client==0.26.0 \
 && rm -rf /src

WORKDIR /
# The chart runs it as this user, with a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["siked-operator"]
