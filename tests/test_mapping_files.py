"""Mapping files: validated with every problem reported as file:line key, secrets kept as references."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.mapping.loader import load_source_file, load_sources

from .conftest import ROOT

GOOD = """version: 1
source: demo
auth: {scheme: token, secret: "${DEMO_TOKEN}"}
rules:
  - name: lead
    match:
      email: {path: email, transform: email}
    fields:
      phones: {path: phone, transform: [phone, list]}
"""


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_loads(tmp_path):
    """A minimal valid file loads into a Source."""
    source, problems = load_source_file(write(tmp_path, GOOD))
    assert problems == [] and source is not None and source.rules[0].name == "lead"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("transform: [phone, list]", "transform: [e164x, list]"),
            "demo.yaml:9 rules.0.fields.phones.transform.0: unknown transform 'e164x'",
        ),
        (("    match:", "    matchh:"), "demo.yaml:6 rules.0.matchh: unknown key"),
        (("version: 1", "version: 2"), "demo.yaml:1 version: only version 1 exists"),
        (('secret: "${DEMO_TOKEN}"', "secret: hunter2"), "auth.secret: secrets must be written as ${NAME} references"),
        (("path: email,", "path: 'email[',"), "rules.0.match.email.path: invalid expression"),
        (
            ("email: {path: email, transform: email}", "phone: {path: phone}"),
            "rules.0.match: matching 'email' needs match keys: email",
        ),
    ],
)
def test_problems_name_file_line_and_key(tmp_path, change, expected):
    """Each kind of mistake is reported with the file, line and key path."""
    _source, problems = load_source_file(write(tmp_path, GOOD.replace(*change)))
    assert any(expected in problem for problem in problems), problems


def test_every_problem_of_every_file_is_reported(tmp_path):
    """load_sources lists the problems of all files at once."""
    write(tmp_path, GOOD.replace("version: 1", "version: 3"))
    write(tmp_path, GOOD.replace("source: demo", "source: other").replace("name: lead", "name: Bad Name"), "other.yaml")
    with pytest.raises(ConfigError) as info:
        load_sources(tmp_path)
    text = "\n".join(info.value.problems)
    assert "demo.yaml:1 version" in text and "other.yaml:5 rules.0.name" in text


def test_unsafe_yaml_is_refused(tmp_path):
    """Python tags are refused by the safe loader."""
    _source, problems = load_source_file(write(tmp_path, GOOD + "x: !!python/object/apply:os.system ['true']\n"))
    assert problems and "not valid YAML" in problems[0]


def test_check_command_exits_1_listing_problems(tmp_path):
    """python -m relay check exits 1 and names file and key."""
    write(tmp_path, GOOD.replace("transform: [phone, list]", "transform: [e164x]"))
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "RELAY_MAPPINGS_DIR": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode == 1
    assert "demo.yaml:9 rules.0.fields.phones.transform.0: unknown transform 'e164x'" in result.stderr


def test_check_passes_on_the_built_in_mappings():
    """The shipped mappings and all their examples pass check."""
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "11 mapping files" in result.stdout
