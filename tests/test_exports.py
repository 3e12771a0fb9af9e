"""Each module's public surface (`__all__`) names only what the module really has."""

from __future__ import annotations

import importlib
import pkgutil

import relay


def test_every_all_entry_exists():
    """Every name listed in a relay module's __all__ is defined there."""
    missing = []
    for info in pkgutil.walk_packages(relay.__path__, "relay."):
        if info.name == "relay.__main__":
            continue
        module = importlib.import_module(info.name)
        missing += [f"{info.name}.{name}" for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    assert missing == []
