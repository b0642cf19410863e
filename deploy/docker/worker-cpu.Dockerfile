# syntax=docker/dockerfile:1
# A worker on CPU: ONNX Runtime (the `cpu` extra) and torch (the `torch` extra, pinned in pyproject.toml).
#   docker build -f deploy/docker/worker-cpu.Dockerfile -t inference-fleet-worker:cpu .
#   docker build -f deploy/docker/worker-cpu.Dockerfile --build-arg EXTRAS=cpu,speed ...   # ONNX only, no torch
# torch comes from PyPI as pinned: its Linux wheel pulls the CUDA libraries (several GB) although this
# image only uses the CPU. The PyTorch CPU-only index is not a package registry these builds may reach;
# where it is, install torch from it first to get a much smaller image. ONNX-only models need no torch.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY gateway ./gateway
COPY workers ./workers
COPY fleet ./fleet
COPY autoscaler ./autoscaler
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ARG EXTRAS=cpu,torch,speed
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLEET_WORKER_DEVICE=cpu \
    FLEET_WORKER_METRICS_PORT=9100
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[${EXTRAS}]" && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /home/fleet --shell /usr/sbin/nologin fleet
USER 10001
WORKDIR /home/fleet
EXPOSE 9100
# Liveness: the worker's metrics endpoint accepts connections (it runs while the worker process runs).
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['FLEET_WORKER_METRICS_PORT'])), 2).close()"]
# FLEET_WORKER_MODELS (required) and the FLEET_KAFKA_*/FLEET_REDIS_* settings come from the environment.
CMD ["python", "-m", "workers"]
