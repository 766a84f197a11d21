# The socialhub image: `docker build -t socialhub .`, then `docker run socialhub` runs
# `socialhub serve` (migrations first) on port 8000. Configuration: SOCIALHUB_* variables
# (README, "Configuration"); deploy/compose.yaml and deploy/k8s/ show a whole system.
#
# Two stages: the first builds the project and its dependencies into a virtualenv (every
# compiled dependency comes as a manylinux wheel, so no compiler is needed), the second
# is the slim Python image, that virtualenv and nothing else, run as an unprivileged user.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/socialhub
WORKDIR /src
# The project's own files only (.dockerignore lets nothing else in).
COPY pyproject.toml README.md ./
COPY migrations ./migrations
COPY socialhub ./socialhub
COPY static ./static
RUN /opt/socialhub/bin/pip install --no-cache-dir . \
    && /opt/socialhub/bin/socialhub --version

FROM ${PYTHON_IMAGE}
# A fixed, unprivileged uid/gid (Kubernetes' runAsNonRoot checks a numeric USER); its
# home is the data directory (the generated secrets and mail of the file backend; media
# too with media.store = "disk": mount a volume there, or use the S3 store).
RUN groupadd --system --gid 10001 socialhub \
    && useradd --system --uid 10001 --gid socialhub --home-dir /var/lib/socialhub --create-home \
       --shell /usr/sbin/nologin socialhub
COPY --from=build /opt/socialhub /opt/socialhub
ENV PATH=/opt/socialhub/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SOCIALHUB_SERVER_HOST=0.0.0.0 \
    SOCIALHUB_SERVER_PORT=8000 \
    SOCIALHUB_SERVER_DATA_DIR=/var/lib/socialhub
USER 10001:10001
WORKDIR /var/lib/socialhub
EXPOSE 8000
# SIGTERM drains: /readyz answers 503 at once, requests and sockets are served for
# server.drain_seconds (10 s), then the sockets are closed with 1012 over as long again,
# then the process stops. Give it the time: `docker stop -t 45`, compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds (deploy/ sets them).
STOPSIGNAL SIGTERM
# Liveness: the process answers. (/readyz is for load balancers: it also asks the
# database and the brokers, and says 503 while draining.)
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SOCIALHUB_SERVER_PORT', '8000') + '/healthz', timeout=2)"]
# Exec form: socialhub is PID 1 and gets the SIGTERM itself (no shell in between).
ENTRYPOINT ["socialhub"]
CMD ["serve"]
