# relay: `gunicorn app:app` by default; run the worker with `python -m relay worker`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RELAY_BIND=0.0.0.0:8000 \
    RELAY_DATABASE_URL=sqlite:////data/relay.db

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY app.py gunicorn.conf.py ./
COPY relay ./relay
COPY mappings ./mappings
# The image's user writes no bytecode (PYTHONDONTWRITEBYTECODE, and /app is root's): without this, every web
# worker's boot and every `python -m relay` command would compile relay's modules from source again.
RUN python -m compileall -q app.py gunicorn.conf.py relay

RUN useradd --system --uid 10001 --home-dir /app relay \
    && mkdir -p /data && chown relay /data
USER relay
VOLUME ["/data"]
EXPOSE 8000

# Asks the port RELAY_BIND names, so a container started with another port is not reported unhealthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, sys, urllib.request; port = os.environ.get('RELAY_BIND', ':8000').rsplit(':', 1)[1]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"

CMD ["gunicorn", "app:app"]
