# syntax=docker/dockerfile:1
# Production image: gunicorn serving api.wsgi:app against an external PostgreSQL (DATABASE_URL).
# Run migrations once per deploy:  docker run --rm -e DATABASE_URL=... IMAGE crm-service db upgrade

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY models ./models
COPY crm_service ./crm_service
COPY api ./api
RUN /opt/venv/bin/pip install --upgrade pip && /opt/venv/bin/pip install .

FROM python:3.11-slim AS runtime
RUN groupadd --system crm && useradd --system --gid crm --home-dir /app --shell /usr/sbin/nologin crm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CRM_REQUIRE_DATABASE_URL=1 \
    CRM_DATA_DIR=/app/data \
    CRM_WORKERS=2 \
    CRM_THREADS=4 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/crm-metrics \
    MPLCONFIGDIR=/app/data/matplotlib
WORKDIR /app
RUN mkdir -p /app/data && chown -R crm:crm /app
USER crm
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
# No gunicorn access log: the app logs one JSON line per request with the route template (raw
# paths and query strings hold customer ids and emails). The worker class answers HTTP-parser
# errors with problem+json. --timeout exceeds the 60 s statement timeout, so slow requests end
# in a problem+json answer. /metrics sums every worker's counts from PROMETHEUS_MULTIPROC_DIR,
# emptied at start. Writable paths: /app/data (volume) and /tmp (rate-limit buckets, metrics), so
# the root filesystem can be read-only:
#   docker run --read-only --tmpfs /tmp -v crm-data:/app/data -e DATABASE_URL=... IMAGE
CMD ["sh", "-c", "rm -rf ${PROMETHEUS_MULTIPROC_DIR} && mkdir -p ${PROMETHEUS_MULTIPROC_DIR} && exec gunicorn -c python:api.serving.gunicorn_hooks --bind 0.0.0.0:8000 --workers ${CRM_WORKERS} --threads ${CRM_THREADS} --keep-alive 5 --timeout 120 --graceful-timeout 10 --no-control-socket --worker-class api.serving.server.ProblemKeepAliveWorker api.wsgi:app"]
