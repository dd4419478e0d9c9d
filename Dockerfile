# slm in a CUDA 12.1 image:  docker build -t slm .
#   docker run --gpus all -v slm-runs:/home/slm/slm/runs slm make rag      (any make target; runs/ kept in a volume)
# torch comes from PyTorch's CUDA 12.6 index (the wheel brings its own CUDA 12.6 runtime; an NVIDIA driver >= 525 runs
# it through CUDA 12's minor-version compatibility, >= 560 for all of 12.6). Another pair:
#   docker build --build-arg TORCH_VERSION=2.12.0 --build-arg TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124" .
FROM nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu126 --extra-index-url https://pypi.org/simple"
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHON=python3.11

# the distribution's current packages (security updates) rather than pinned versions that would vanish upstream
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common git make ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 slm
USER 1000:1000
WORKDIR /home/slm/slm

# dependencies first (cached layer): the very same `make setup` as on a workstation
COPY --chown=1000:1000 Makefile requirements.txt constraints.txt pyproject.toml ./
RUN make setup TORCH_VERSION="$TORCH_VERSION" TORCH_INDEX="$TORCH_INDEX"
# a CPU-only or CUDA 13 torch would make `--gpus all` useless or need a newer driver: stop the build, saying so
# (its own step, so the message is the last thing a failed build prints)
# hadolint ignore=DL3059
RUN .venv/bin/python -c "import sys, torch; v = torch.version.cuda or 'none (a CPU build)'; \
sys.exit(0 if v.startswith('12.') else f'error: torch {torch.__version__} is built for CUDA {v}, not CUDA 12: pass a CUDA 12 index, e.g. --build-arg TORCH_INDEX=\"--index-url https://download.pytorch.org/whl/cu126\"')"

# the code and the bundled data: `make rag` needs nothing from the network (the embedding model is a pip package)
COPY --chown=1000:1000 . .
# the COPY above is newer than the setup stamp's inputs only if they changed; keep the stamp valid
RUN touch .venv/.slm-setup && mkdir -p runs
VOLUME ["/home/slm/slm/runs"]

CMD ["make", "help"]
