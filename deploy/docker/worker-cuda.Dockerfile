# syntax=docker/dockerfile:1
# A worker on NVIDIA GPUs: ONNX Runtime with the CUDA and TensorRT providers (the `gpu` extra) and torch
# with CUDA (the `torch` extra: PyTorch's PyPI wheel for Linux ships its CUDA libraries as nvidia-* wheels).
#   docker build -f deploy/docker/worker-cuda.Dockerfile -t inference-fleet-worker:cuda .
#   docker run --gpus 1 -e FLEET_WORKER_MODELS=my-model inference-fleet-worker:cuda
# The host needs an NVIDIA driver that supports CUDA 12 and the NVIDIA Container Toolkit (Kubernetes: the
# NVIDIA device plugin or GPU operator). Python and the CUDA/cuDNN runtime come from the base image and
# Ubuntu's archive; everything else from PyPI.

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# Ubuntu's python3 of this release; apt package versions change with the base image tag.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY gateway ./gateway
COPY workers ./workers
COPY fleet ./fleet
COPY autoscaler ./autoscaler
RUN python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir "setuptools>=68" "wheel>=0.42" \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${CUDA_IMAGE}
ARG EXTRAS=gpu,torch,speed
# Ubuntu's python3 of this release; apt package versions change with the base image tag.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/fleet \
    && useradd --system --uid 10001 --create-home --home-dir /home/fleet --shell /usr/sbin/nologin fleet
ENV PATH=/opt/fleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLEET_WORKER_DEVICE=cuda \
    FLEET_WORKER_METRICS_PORT=9100
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[${EXTRAS}]" && rm -rf /wheels
USER 10001
WORKDIR /home/fleet
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['FLEET_WORKER_METRICS_PORT'])), 2).close()"]
CMD ["python", "-m", "workers"]
