# syntax=docker/dockerfile:1
#
# lifespan-sidecar image: the sidecar (uvloop is a dependency) and its bundled demo app.
#
#   docker build -t lifespan-sidecar:0.1.0 .
#   docker run --rm -p 8000:8000 -p 8081:8081 lifespan-sidecar:0.1.0
#   curl localhost:8000/ ; curl 'localhost:8081/readyz?verbose'
#
# Your own app on top of it: examples/fastapi-app/ holds two Dockerfiles built `FROM` this
# image (one installs a requirements file and copies the code, one installs the app's wheel);
# CI builds and runs both.
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
# tini as PID 1: it reaps the zombies left by processes the app starts and orphans (the
# kernel hands orphans to PID 1, and the sidecar never waits for processes it did not
# start), forwards SIGTERM and SIGINT to the sidecar, and exits with the sidecar's exit code.
# Debian's package, so it comes with security updates; the version pin allows a rebuild of
# the same upstream release.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* \
    && rm -rf /var/lib/apt/lists/*
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
# Exec form, no shell at run time: tini is PID 1 and runs `sidecar` as its only child, passing
# it the signals (`podman stop`, the kubelet's SIGTERM). A chart `command` replaces all of it.
ENTRYPOINT ["/usr/bin/tini", "--", "sidecar"]
CMD ["run", "--config", "/etc/sidecar/sidecar.yaml", "sidecar.examples.demo:app"]
