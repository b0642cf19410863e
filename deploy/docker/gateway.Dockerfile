# syntax=docker/dockerfile:1
# The gateway and the autoscaler (slim: no model runtimes).
#   docker build -f deploy/docker/gateway.Dockerfile -t inference-fleet-gateway .
#   docker run inference-fleet-gateway                      # python -m gateway
#   docker run inference-fleet-gateway python -m autoscaler  # FLEET_AUTOSCALER_BACKEND=kubernetes
# Build context: the repository root (see /.dockerignore). Only PyPI is reached at build time.

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
ARG EXTRAS=kubernetes,speed
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLEET_GATEWAY_HOST=0.0.0.0 \
    FLEET_GATEWAY_PORT=8000
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[${EXTRAS}]" && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /home/fleet --shell /usr/sbin/nologin fleet
USER 10001
WORKDIR /home/fleet
EXPOSE 8000
# Ready = Kafka producer connected and Redis answering (the same check as the Kubernetes readiness probe).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('FLEET_GATEWAY_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "gateway"]
