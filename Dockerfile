# slm in a CUDA 12.1 image:  docker build -t slm .   then   docker run --gpus all slm make rag   (any make target)
FROM nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04

ARG TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu126 --extra-index-url https://pypi.org/simple"
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHON=python3.11

RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common git make ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 slm
USER slm
WORKDIR /home/slm/slm

# dependencies first (cached layer): the very same `make setup` as on a workstation
COPY --chown=slm:slm Makefile requirements.txt constraints.txt pyproject.toml ./
RUN make setup TORCH_INDEX="$TORCH_INDEX"

COPY --chown=slm:slm . .
# the COPY above is newer than the setup stamp's inputs only if they changed; keep the stamp valid
RUN touch .venv/.slm-setup

CMD ["make", "help"]
