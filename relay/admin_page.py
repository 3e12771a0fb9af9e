"""`/admin/`: the operator's page in a browser, over the admin API.

The page is three fixed files and holds no data: its script asks for the admin token, keeps it in the tab's
session storage and sends it as the API's bearer token, so the page itself is served to anyone. Payloads
shown on it are the providers' (anyone's) text: the script writes them as text, never as markup, and the
page's Content-Security-Policy lets nothing but its own script and style run, nor connect anywhere else.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from flask import Blueprint, Response, request

__all__ = ["ADMIN_PAGE_FILES", "CONTENT_SECURITY_POLICY", "admin_page_blueprint"]

_FOLDER = Path(__file__).with_name("admin_static")

# name in the URL -> (file, content type); nothing else under /admin/ is served from disk.
ADMIN_PAGE_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "admin.css": ("admin.css", "text/css; charset=utf-8"),
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def admin_page_blueprint() -> Blueprint:
    """The page's files, read once: they change with relay's code, not while it runs."""
    bp = Blueprint("admin_page", __name__, url_prefix="/admin")
    served: dict[str, tuple[bytes, str, str]] = {}
    for name, (file, content_type) in ADMIN_PAGE_FILES.items():
        body = (_FOLDER / file).read_bytes()
        served[name] = (body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def view(name: str) -> Response:
        body, content_type, etag = served[name]
        if etag in request.headers.get("If-None-Match", ""):
            response = Response(status=304)
        else:
            response = Response(body, content_type=content_type)
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = "no-cache"  # asked again each time, answered 304 while unchanged
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    for name in ADMIN_PAGE_FILES:
        endpoint = name.replace(".", "_") or "index"  # Flask's endpoint names take no dot
        bp.add_url_rule(f"/{name}", endpoint, functools.partial(view, name), methods=["GET"])
    return bp
