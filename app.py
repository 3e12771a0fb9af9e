"""The WSGI entry point: `gunicorn app:app`."""

from __future__ import annotations

from relay.web import create_app

app = create_app()
