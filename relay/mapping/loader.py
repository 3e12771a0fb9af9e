"""Load every mapping file of a folder, reporting each problem as file:line key: message."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from marshmallow import ValidationError

from relay.errors import ConfigError
from relay.mapping import envrefs
from relay.mapping.extending import ExtendingFileSchema, Extension, base_settings, rebind, secret_settings
from relay.mapping.model import Source
from relay.mapping.schema import MappingFileSchema
from relay.mapping.yamlnodes import LineTable, line_of, load_with_lines

__all__ = [
    "MAPPING_SUFFIXES",
    "load_source_file",
    "load_sources",
    "load_sources_leniently",
    "mapping_files",
    "referenced_variables",
]


MAPPING_SUFFIXES = (".yaml", ".yml")  # `<source>.yaml`: a mapping file is named after its source


def mapping_files(folder: str | Path) -> list[Path]:
    """The mapping files of `folder`, sorted (examples live in a subfolder)."""
    root = Path(folder)
    return sorted(path for suffix in MAPPING_SUFFIXES for path in root.glob("*" + suffix))


def load_source_file(path: Path) -> tuple[Source | None, list[str]]:
    """Load one file: the source, or None with every problem found. A file that `extends` another is the
    other read with its settings (relay/mapping/extending.py)."""
    data, lines, problems = _read(path)
    if data is None:
        return None, problems
    if "extends" in data:
        return _load_extending(path, data, lines)
    return _load(data, lines, str(path), path.stem)


def _read(path: Path) -> tuple[dict[str, Any] | None, LineTable, list[str]]:
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, {}, [f"{shown}:1 cannot read: {exc}"]
    try:
        data, lines = load_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        return None, {}, [f"{shown}:{line} not valid YAML: {getattr(exc, 'problem', exc)}"]
    if not isinstance(data, dict):
        return None, lines, [f"{shown}:1 a mapping file is a YAML mapping starting with version: 1"]
    return data, lines, []


def _load(
    data: dict[str, Any], lines: LineTable, shown: str, name: str, extension: Extension | None = None
) -> tuple[Source | None, list[str]]:
    problems = _broken_references(data, lines, shown)
    try:
        with envrefs.rebound(dict(extension.settings) if extension else {}):
            loaded: dict[str, Any] = MappingFileSchema().load(data)
    except ValidationError as exc:
        problems.extend(_describe(exc.messages, lines, shown))
        return None, problems
    if loaded["source"] != name:
        problems.append(
            f"{shown}:{line_of(lines, ('source',))} source: {loaded['source']!r} must match the file name {name!r}"
        )
    if problems:
        return None, problems
    return (
        Source(
            name=loaded["source"],
            file=shown,
            description=loaded["description"],
            kind=loaded["kind"],
            auth=loaded["auth"],
            pings=tuple(loaded["pings"]),
            dedup_headers=tuple(loaded["dedup"].get("headers", ())),
            dedup_paths=tuple(loaded["dedup"].get("paths", ())),
            ip_paths=tuple(loaded["ip"].get("paths", ())),
            ip_from_client=bool(loaded["ip"].get("client", False)),
            event_header=(loaded["event"] or {}).get("header"),
            event_path=(loaded["event"] or {}).get("path"),
            event_query=(loaded["event"] or {}).get("query"),
            decode_json=tuple(loaded["decode_json"]),
            accepted_status=loaded["accepted_status"],
            cors_origins=tuple((loaded["cors"] or {}).get("origins", ())),
            challenge_query=(loaded["challenge"] or {}).get("query"),
            payload_schema=loaded["payload"],
            fetches=MappingFileSchema.fetch_specs(loaded["fetch"]),
            delays=tuple(loaded["delay"]),
            rules=tuple(loaded["rules"]),
            extension=extension,
        ),
        [],
    )


def _load_extending(path: Path, data: dict[str, Any], lines: LineTable) -> tuple[Source | None, list[str]]:
    """A file that extends another: checked itself, then its base rebound to its settings and loaded as the
    base is, each problem of that said at this file's settings with the base's line."""
    shown = str(path)
    extended, problems = _extended_data(path, data, lines)
    if extended is None:
        return None, problems
    merged, base_lines, extension = extended
    source, found = _load(merged, base_lines, extension.file, path.stem, extension)
    if source is not None:
        return dataclasses.replace(source, file=shown), []
    at = f"{shown}:{line_of(lines, ('settings',) if extension.settings else ('extends',))}"
    return None, [f"{at} with its settings, {problem}" for problem in found]


def _extended_data(
    path: Path, data: dict[str, Any], lines: LineTable
) -> tuple[tuple[dict[str, Any], LineTable, Extension] | None, list[str]]:
    """The base file's data with this file's settings and name, the base's lines and what the file says on
    top of it; None with the problems when there is none."""
    shown = str(path)
    try:
        own: dict[str, Any] = ExtendingFileSchema().load(data)
    except ValidationError as exc:
        return None, _describe(exc.messages, lines, shown)
    at = f"{shown}:{line_of(lines, ('extends',))} extends:"
    if own["source"] != path.stem:
        line = line_of(lines, ("source",))
        return None, [f"{shown}:{line} source: {own['source']!r} must match the file name {path.stem!r}"]
    base_path = next(
        (
            path.with_name(own["extends"] + suffix)
            for suffix in MAPPING_SUFFIXES
            if path.with_name(own["extends"] + suffix).is_file()
        ),
        None,
    )
    if base_path is None:
        return None, [f"{at} no mapping file {own['extends']}.yaml beside this one"]
    base, base_lines, found = _read(base_path)
    if base is None:
        return None, [f"{at} {base_path} does not load: {found[0]}"]
    if "extends" in base:
        return None, [f"{at} {base_path} extends {base['extends']!r} itself; extend that file instead"]
    problems = []
    names, secrets = base_settings(base), secret_settings(base)
    for name, value in own["settings"].items():
        where = f"{shown}:{line_of(lines, ('settings', name))} settings.{name}:"
        if name not in names:
            problems.append(f"{where} {base_path.name} reads no setting {name} (it reads {', '.join(sorted(names))})")
        elif name in secrets and not envrefs.is_ref(value):
            problems.append(
                f"{where} {base_path.name} reads it as a secret: give the name of another setting, ${{NAME}}, "
                "never the secret itself"
            )
    if problems:
        return None, problems
    merged = rebind(base, own["settings"])
    merged["source"] = own["source"]
    if own["description"] is not None:
        merged["description"] = own["description"]
    extension = Extension(base=base_path.stem, file=str(base_path), settings=tuple(own["settings"].items()))
    return (merged, base_lines, extension), []


def load_sources(folder: str | Path) -> dict[str, Source]:
    """Load the whole folder.

    Raises:
        ConfigError: with every problem of every file, or when there is no file.
    """
    sources, broken = load_sources_leniently(folder)
    if broken:
        raise ConfigError([problem for problems in broken.values() for problem in problems])
    return sources


def load_sources_leniently(folder: str | Path) -> tuple[dict[str, Source], dict[str, list[str]]]:
    """The sources whose files load, and the problems of the others by source name (the file's name).

    For a web worker that boots while relay runs: a file broken on disk since the start (an edit not yet
    checked) must not keep it from serving every other source.

    Raises:
        ConfigError: when the folder has no mapping file at all.
    """
    files = mapping_files(folder)
    if not files:
        raise ConfigError(f"{folder}: no mapping files (*.yaml) found; set RELAY_MAPPINGS_DIR")
    sources: dict[str, Source] = {}
    broken: dict[str, list[str]] = {}
    for path in files:
        source, problems = load_source_file(path)
        if problems:
            broken.setdefault(path.stem, []).extend(problems)
        elif source is not None:
            sources[source.name] = source
    return sources, broken


def _walk(messages: Any, path: tuple[str, ...], lines: LineTable) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(messages, dict):
        for key, value in messages.items():
            child = (*path, str(key))
            # marshmallow's Dict nests its errors under "key"/"value", which the file does not have.
            if key == "_schema" or (key in ("key", "value") and child not in lines):
                child = path
            yield from _walk(value, child, lines)
    elif isinstance(messages, list):
        for item in messages:
            yield from _walk(item, path, lines)
    else:
        yield path, str(messages)


def _describe(messages: Any, lines: LineTable, shown: str) -> list[str]:
    found = []
    for path, message in _walk(messages, (), lines):
        if message == "Unknown field.":
            message = "unknown key"
        key = ".".join(path) or "(file)"
        found.append(f"{shown}:{line_of(lines, path)} {key}: {message}")
    return found


def _broken_references(data: Any, lines: LineTable, shown: str) -> list[str]:
    problems = []
    for path, text in _strings(data, ()):
        if "${" in text and envrefs.broken_ref(text):
            problems.append(f"{shown}:{line_of(lines, path)} {'.'.join(path)}: malformed reference in {text!r}")
    return problems


def _strings(data: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, (*path, str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _strings(value, (*path, str(index)))
    elif isinstance(data, str):
        yield path, data


def referenced_variables(folder: str | Path) -> dict[str, list[envrefs.EnvRef]]:
    """Every `${NAME}` each mapping file references, for `check` and `sources`, with those of the schema's
    defaults (a rule's `db_id`), as a file that extends another reads them."""
    found: dict[str, list[envrefs.EnvRef]] = {}
    for path in mapping_files(folder):
        data, lines, _problems = _read(path)
        rebound: dict[str, str | int] = {}
        if data is not None and "extends" in data:
            extended = _extended_data(path, data, lines)[0]
            data = extended[0] if extended else None
            rebound = dict(extended[2].settings) if extended else {}
        if data is None:
            continue
        refs = [ref for _p, text in _strings(data, ()) for ref in envrefs.find_refs(text)]
        found[path.stem] = refs + envrefs.implied_refs(rebound)
    return found
