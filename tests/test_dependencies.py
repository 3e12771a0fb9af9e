"""requirements.txt pins every package relay runs with, what its dependencies need included, and
requirements-dev.txt the same versions: an image or a checkout built later installs what the tests ran with,
not whatever a dependency's dependency released since."""

from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import ROOT


def _requirements(path: Path) -> list[Requirement]:
    """The requirement lines of a requirements file (options such as `-r` and comments left out)."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text and not text.startswith("-"):
            found.append(Requirement(text))
    return found


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for requirement in _requirements(path):
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {requirement} is not pinned"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def _needed(requirements: list[Requirement]) -> set[str]:
    """The installed distributions these requirements need, and what those need in turn, with the extras asked
    for and the markers as this Python reads them."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        extras = requirement.extras or {""}
        for text in distribution(requirement.name).requires or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(child)
    return {name for name, _ in seen}


def _installed(name: str) -> str:
    return distribution(name).version


def test_requirements_txt_pins_everything_relay_runs_with_at_the_tested_versions():
    pins = _pins(ROOT / "requirements.txt")
    needed = _needed(_requirements(ROOT / "requirements.in"))
    assert len(needed) > 40 and {"flask", "jinja2", "h11", "sqlalchemy", "psycopg-binary"} <= needed
    assert sorted(needed - set(pins)) == []  # each needed one is pinned, not left to the day of the install
    assert sorted(set(pins) - needed) == []  # and nothing relay no longer needs stays pinned
    assert {name: _installed(name) for name in pins} == pins


def test_requirements_dev_txt_takes_the_runtime_pins_as_they_are_and_pins_the_test_tools_too():
    runtime = _pins(ROOT / "requirements.txt")
    development = _pins(ROOT / "requirements-dev.txt")
    assert {name: development.get(name) for name in runtime} == runtime
    needed = _needed(_requirements(ROOT / "requirements-dev.in"))
    assert {"pytest", "selenium", "trio", "pluggy"} <= needed
    assert sorted(needed - set(development)) == []
    assert {name: _installed(name) for name in development} == development
