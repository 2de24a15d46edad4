# syntax=docker/dockerfile:1
#
# lifespan-sidecar image: the sidecar (uvloop is a dependency) and its bundled demo app.
#
#   docker build -t lifespan-sidecar:0.1.0 .
#   docker run --rm -p 8000:8000 -p 8081:8081 lifespan-sidecar:0.1.0
#   curl localhost:8000/ ; curl 'localhost:8081/readyz?verbose'
#
# Your own app on top of it: install the app into the image and point the sidecar at it.
#
#   FROM lifespan-sidecar:0.1.0
#   USER root
#   COPY requirements.txt /tmp/requirements.txt
#   RUN pip install --no-cache-dir -r /tmp/requirements.txt
#   # either install your package ...
#   COPY dist/myapp-*.whl /tmp/
#   RUN pip install --no-cache-dir /tmp/myapp-*.whl
#   # ... or copy plain code into /app, the working directory (config app.app_dir is ".")
#   COPY src/ /app/
#   USER 10001:10001
#   CMD ["run", "--config", "/etc/sidecar/sidecar.yaml", "myapp.main:app"]
#
# In Kubernetes the Helm chart (charts/lifespan-sidecar) mounts its ConfigMap over
# /etc/sidecar and passes `run --config /etc/sidecar/sidecar.yaml`; the app target then comes
# from the chart's config.app.target.
#
# No HEALTHCHECK: Kubernetes ignores the image's HEALTHCHECK. The chart declares startup,
# readiness and liveness probes on the admin port (/startupz, /readyz, /livez) instead; with
# plain Docker, poll `curl -f localhost:8081/readyz`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project's wheel and every dependency's wheel --------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md is the package's long description (pyproject `readme`): the build needs it.
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
RUN pip wheel --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# No .pyc written at run time (the root filesystem is read-only under the chart; pip compiled
# the installed modules already), and log lines leave the process at once.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Only the wheels from the build stage can be installed (--no-index), so the version is the
# one just built and no pin is needed (hadolint DL3013). The bind mount keeps the wheels out of
# the image's layers.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels lifespan-sidecar
# The default config file: every key at its default, written by the sidecar itself, so it is
# valid by construction and shows what can be set. Replace it with a COPY or a mount.
RUN mkdir -p /etc/sidecar \
    && sidecar check-config > /etc/sidecar/sidecar.yaml
WORKDIR /app
# A numeric user and group with no passwd entry: Kubernetes' runAsNonRoot can verify a number,
# not a name. The chart's securityContext uses the same 10001.
USER 10001:10001
# App port (server.port) and admin port (admin.port: probes, /prestop, /metrics).
EXPOSE 8000 8081
# Exec form: `sidecar` is PID 1 and receives SIGTERM itself; no shell is involved at run time.
ENTRYPOINT ["sidecar"]
CMD ["run", "--config", "/etc/sidecar/sidecar.yaml", "sidecar.examples.demo:app"]
