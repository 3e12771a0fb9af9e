"""Every mapping example runs as a test: a real request in, the exact calls out."""

from __future__ import annotations

import pytest

from relay.mapping.examples import example_files, load_example, run_example
from relay.mapping.loader import load_sources

from .conftest import BUILT_IN_SOURCES, MAPPINGS

SOURCES = load_sources(MAPPINGS)
EXAMPLES = example_files(MAPPINGS)


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}/{p.stem}" for p in EXAMPLES])
def test_example(path):  # type: ignore[no-untyped-def]
    """The mapping turns the example request into exactly the expected calls."""
    example = load_example(path)
    assert run_example(example, SOURCES[example.source]) == []


def test_every_source_has_two_examples():
    """Each built-in source ships at least two examples."""
    expected = set(BUILT_IN_SOURCES)
    assert set(SOURCES) == expected
    for name in expected:
        assert len(example_files(MAPPINGS, name)) >= 2, name


def test_example_runner_reports_a_difference(tmp_path):
    """A wrong expectation is reported, so the examples can fail."""
    original = load_example(MAPPINGS / "examples" / "tilda" / "form-russian-phone.yaml")
    broken = type(original)(
        path=original.path,
        source=original.source,
        description="",
        request=original.request,
        env={},
        expect={"calls": [{"method": "profiles/import", "body": {}}]},
    )
    assert run_example(broken, SOURCES["tilda"])
