"""relay: verified, durable webhook relay from form builders and shops to a profile API."""

from __future__ import annotations

__version__ = "0.1.0"
