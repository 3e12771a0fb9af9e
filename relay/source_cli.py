"""The commands about sources and their mapping files: `preview` (what a payload would become), `check`
(the mapping files, their examples and the upstream), `sources` (each source's hook URL and what it needs)
and `import` (exported leads or orders stored as webhooks).

Apart from relay/cli.py, which parses every command's arguments, so that commands that need none of this
(`run`'s supervisor, `overview`, `sandbox`) start without loading the mapping machinery.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from relay.errors import MappingError, RequestRejected
from relay.inbound import InboundRequest, is_ping, with_url_event
from relay.mapping import envrefs
from relay.mapping.delays import wait_for
from relay.mapping.examples import ExampleUnreadable, check_example, example_files, load_example, save_example
from relay.mapping.fetches import FetchRequest, given_answer
from relay.mapping.loader import load_source_file, load_sources, mapping_files, referenced_variables
from relay.mapping.model import Source
from relay.mapping.translate import TranslateContext
from relay.pipeline import parse_request, take_body_token, translate_request
from relay.settings import Settings
from relay.source_report import describe_source, source_lines
from relay.upstream.xmlbody import to_xml

__all__ = ["cmd_check", "cmd_import", "cmd_preview", "cmd_sources"]


def _guess_content_type(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    return {".json": "application/json", ".xml": "application/xml", ".txt": None}.get(suffix)


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    stored = None
    if args.delivery and (args.source or args.file):
        print("relay: give --source and a payload file, or --delivery ID, not both", file=sys.stderr)
        return 1
    if args.delivery and (args.content_type or args.header or args.query or args.client_ip):
        # They were ignored without a word: the stored request's own content type, headers and address count.
        print(
            "relay: --delivery translates the request as it was received, with its own content type, headers "
            "and client address; --content-type, --header, --query and --client-ip go with a payload file",
            file=sys.stderr,
        )
        return 1
    if args.delivery:
        stored = _stored_request(args.delivery, settings)
        if stored is None:
            return 1
    elif not (args.source and args.file):
        print("relay: give --source and a payload file (- for stdin), or --delivery ID", file=sys.stderr)
        return 1
    sources = load_sources(settings.mappings_dir)
    name = stored.source if stored else args.source
    source = sources.get(name)
    if source is None:
        print(f"relay: unknown source {name!r} (known: {', '.join(sorted(sources))})", file=sys.stderr)
        return 1
    request = stored or _request_from_file(args, source)
    if request is None:
        return 1
    context = TranslateContext(env=settings.env, phone_region=settings.phone_region, geo=_geo(settings))
    try:
        if stored is None:  # as relay would keep it: without a token the body carries
            request = take_body_token(source, request)[1]
        if args.save_example and not _save_example(args, settings, source, request):
            return 1
        if stored is None and is_ping(source, request, parse_request(request)):
            print("[]")
            print("relay: a test ping: answered 200 and not forwarded", file=sys.stderr)
            return 0
        fetch = _fetched_from_files(args.fetched)
        holder = _once_holder(args, settings, source.name)
        translation = translate_request(
            source, request, context, upstream_format=args.format, fetch=fetch, once_holder=holder
        )
    except RequestRejected as exc:
        print(f"relay: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except MappingError as exc:
        print(f"relay: mapping error: {exc.detail}", file=sys.stderr)
        return 1
    delay = wait_for(source, translation.event, settings.env)
    if delay.seconds and stored is None:
        print(
            f"relay: the worker takes this webhook ({translation.event}) {delay.seconds} s after it arrives (delay)"
            + (f"; {delay.problem}" if delay.problem else ""),
            file=sys.stderr,
        )
    for passed in translation.passed_over:
        print(f"relay: {passed}", file=sys.stderr)
    if translation.ignored:
        print("[]")
        print(f"relay: ignored: {translation.ignored}", file=sys.stderr)
        return 0
    if translation.forget:
        print("[]")
        named = ", ".join(translation.forget)
        print(
            f"relay: rule {translation.rule!r} forgets every stored delivery naming {named}, from every source; "
            "no call is made",
            file=sys.stderr,
        )
        return 0
    if translation.once_key is not None:
        print(
            f"relay: rule {translation.rule!r} applies once per key: {translation.once_key!r} (the worker takes it "
            "for this delivery before the calls go; a later delivery with the same key passes the rule over)",
            file=sys.stderr,
        )
    calls = [call.shown() for call in translation.calls]
    if args.format == "xml":
        calls = [{**call, "body": to_xml(call["body"])} for call in calls]
    print(json.dumps(calls, ensure_ascii=False, indent=2))
    if translation.order_refused:
        print(f"relay: mapping error: {translation.order_refused} (the calls above would still go)", file=sys.stderr)
        return 1
    return 0


def _save_example(args: argparse.Namespace, settings: Settings, source: Source, request: InboundRequest) -> bool:
    """`--save-example NAME`: the request written as an example of its source, expecting what relay does with
    it now with the settings its mapping reads (`_example_env`); False (said on stderr) when it cannot be."""
    name = args.save_example.removesuffix(".yaml")
    if not name or Path(name).name != name or name.startswith("."):
        print(f"relay: --save-example {args.save_example!r} must be a file name, without a folder", file=sys.stderr)
        return False
    path = Path(settings.mappings_dir) / "examples" / source.name / f"{name}.yaml"
    described = args.description or (
        f"delivery {args.delivery}, saved by relay preview" if args.delivery else f"{args.file}, saved by relay preview"
    )
    try:
        expect = save_example(
            path,
            source,
            request,
            description=described,
            env=_example_env(settings, source.name),
            fetched=_fetched_files(args.fetched),
            once_taken=frozenset(args.once_taken),
        )
    except ValueError as exc:
        print(f"relay: the example was not saved: {exc}", file=sys.stderr)
        return False
    outcome = next(key for key in ("calls", "ignored", "forget", "ping", "error") if key in expect)
    said = f"{len(expect['calls'])} call(s)" if outcome == "calls" else outcome
    print(f"relay: saved {path} (expecting {said})", file=sys.stderr)
    return True


_SECRET_LIKE = ("TOKEN", "SECRET", "KEY", "PASSWORD")


def _example_env(settings: Settings, source: str) -> dict[str, str]:
    """The settings the source's mapping reads that are set now, for a saved example to run with: a secret's
    value is written `not-shown` (no call carries one), the phone region when it is not the default."""
    env: dict[str, str] = {}
    for ref in referenced_variables(settings.mappings_dir).get(source, []):
        value = settings.env.get(ref.name)
        if value:
            env[ref.name] = "not-shown" if any(word in ref.name for word in _SECRET_LIKE) else value
    if settings.phone_region != "RU":
        env["RELAY_PHONE_REGION"] = settings.phone_region
    return env


def _fetched_files(given: list[str]) -> dict[str, Path | int]:
    """`--fetched NAME=FILE` (or `NAME=404`, the API's status), repeated: the answers by fetch name. Raises
    MappingError for one that is not."""
    files: dict[str, Path | int] = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise MappingError(f"--fetched {item!r} must be NAME=FILE, or NAME=STATUS (404)")
        files[name] = int(path) if path.isdigit() and len(path) == 3 else Path(path)
    return files


def _fetched_from_files(given: list[str]) -> Callable[[FetchRequest], object]:
    """Preview makes no network call: what a fetch would get comes from `--fetched NAME=FILE`, and each
    fetch it would make is said on stderr, its address without the query."""
    files = _fetched_files(given)

    def fetch(request: FetchRequest) -> object:
        path = files.get(request.name)
        print(f"relay: fetch {request.name}: GET {request.shown}" + (f" <- {path}" if path else ""), file=sys.stderr)
        if path is None:
            raise MappingError(
                f"fetch {request.name}: preview makes no network call; give the API's answer as "
                f"--fetched {request.name}=FILE"
            )
        return given_answer(request, path)

    return fetch


def _headers(given: Sequence[str]) -> dict[str, str] | None:
    """The --header options as a mapping; None, said on stderr, when one is not 'Name: value'."""
    headers: dict[str, str] = {}
    for header in given:
        name, sep, value = header.partition(":")
        if not sep:
            print(f"relay: --header {header!r} must be 'Name: value'", file=sys.stderr)
            return None
        headers[name.strip()] = value.strip()
    return headers


def _query(given: Sequence[str]) -> dict[str, str] | None:
    """The --query options (the hook URL's parameters) as a mapping; None, said on stderr, when one is not
    'name=value'."""
    query: dict[str, str] = {}
    for parameter in given:
        name, sep, value = parameter.partition("=")
        if not sep or not name:
            print(f"relay: --query {parameter!r} must be 'name=value'", file=sys.stderr)
            return None
        query[name] = value
    return query


def _request_from_file(args: argparse.Namespace, source: Source) -> InboundRequest | None:
    """The payload file as the provider would send it, with --content-type, --header and --query."""
    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    headers = _headers(args.header)
    query = _query(args.query)
    if headers is None or query is None:
        return None
    content_type = args.content_type or headers.get("Content-Type") or _guess_content_type(args.file)
    return InboundRequest(
        source=source.name,
        body=body,
        content_type=content_type,
        headers=with_url_event(source, headers, query),  # as the ingress keeps them
        client_ip=args.client_ip,
    )


def _once_holder(args: argparse.Namespace, settings: Settings, source: str) -> Callable[[str], str | None]:
    """Who took a rule's once key: the keys given with --once-taken, and for a stored delivery the store
    (another delivery than this one)."""
    taken = set(args.once_taken)

    def holder(key: str) -> str | None:
        if key in taken:
            return "an earlier delivery (--once-taken)"
        if not args.delivery:
            return None
        from relay.store import Store

        store = Store(settings.database_url)
        try:
            return store.once_taken_by(source, args.delivery, key)
        finally:
            store.close()

    return holder


def _stored_request(delivery_id: str, settings: Settings) -> InboundRequest | None:
    """A stored delivery's request, as the worker translates it (a replay's dry run, call by call)."""
    from relay.store import Store, status_and_reason

    store = Store(settings.database_url)
    try:
        delivery = store.get(delivery_id)
    finally:
        store.close()
    if delivery is None:
        print(f"relay: no delivery {delivery_id}", file=sys.stderr)
        return None
    taken = ""
    if delivery.calls_done:
        taken = f"; the upstream took its first {delivery.calls_done} call(s), which are not sent again"
    print(
        f"relay: delivery {delivery_id} ({status_and_reason(delivery.status, delivery.reason)}), "
        f"translated with the mapping files as they are now{taken}",
        file=sys.stderr,
    )
    return delivery.inbound()


def _geo(settings: Settings):  # type: ignore[no-untyped-def]
    if not settings.geoip_db:
        return None
    from relay.geo import GeoLookup

    return GeoLookup(settings.geoip_db)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    code = _check_mapping_files(settings)
    if args.upstream:
        from relay.upstream.probe import probe_upstream  # httpx only for this question

        probe = probe_upstream(settings)
        print(f"upstream: {probe.said}", file=sys.stdout if probe.ok else sys.stderr)
        code = code or (0 if probe.ok else 1)
    return code


def _check_mapping_files(settings: Settings) -> int:
    problems: list[str] = []
    sources = {}
    files = mapping_files(settings.mappings_dir)
    if not files:
        problems.append(f"{settings.mappings_dir}: no mapping files found")
    for path in files:
        source, found = load_source_file(path)
        problems.extend(found)
        if source is not None:
            sources[source.name] = source
    examples_run = 0
    reached: dict[str, set[str | None]] = {}  # by source, the rules its examples reached
    for name, source in sorted(sources.items()):
        paths = example_files(settings.mappings_dir, name)
        if not paths and source.extension is None:  # one that extends another has the base's rules and examples
            problems.append(f"{source.file}:1 (file): no examples in {settings.mappings_dir}/examples/{name}/")
        for path in paths:
            examples_run += 1
            try:
                example = load_example(path)
            except (OSError, KeyError, TypeError, ValueError) as exc:
                line = exc.line if isinstance(exc, ExampleUnreadable) else 1
                problems.append(f"{path}:{line} example cannot be read: {exc}")
                continue
            differences, observed = check_example(example, source, upstream_format=settings.upstream_format)
            problems.extend(f"{path}:1 {difference}" for difference in differences)
            reached.setdefault(name, set()).add(observed.rule)
    for path in example_files(settings.mappings_dir):
        if path.parent.name not in sources and path.parent.name not in {p.stem for p in files}:
            problems.append(f"{path}:1 example for unknown source {path.parent.name!r}")
    unset: dict[str, list[str]] = {}
    for name, refs in referenced_variables(settings.mappings_dir).items():
        for variable in envrefs.missing(refs, settings.env):
            unset.setdefault(variable, []).append(name)
    if problems:
        print(f"{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print("  " + problem, file=sys.stderr)
        return 1
    print(f"ok: {len(sources)} mapping files, {examples_run} examples")
    unproven = [
        f"  {source.file} rules.{index} ({rule.name})"
        for name, source in sorted(sources.items())
        if source.extension is None
        for index, rule in enumerate(source.rules)
        if rule.name not in reached.get(name, set())
    ]
    if unproven:
        print(
            "rules no example reaches (a request it takes, saved with `relay preview ... --save-example NAME`, "
            "proves it):\n" + "\n".join(unproven)
        )
    if unset:
        print(
            "unset variables (a source whose secret is unset refuses its requests; one whose fetch needs a "
            "setting keeps them, and they fail as mapping until it is set and they are replayed, or go without "
            "the fetch when it is optional):"
        )
        for variable, names in sorted(unset.items()):
            print(f"  {variable}: {', '.join(sorted(set(names)))}")
    return 0


def cmd_sources(args: argparse.Namespace, settings: Settings) -> int:
    sources = load_sources(settings.mappings_dir)
    described = [describe_source(source, settings) for _name, source in sorted(sources.items())]
    if args.json:
        print(json.dumps({"sources": described}, indent=2))
        return 0
    for one in described:
        print("\n".join(source_lines(one, settings)))
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from relay.importer import format_of, import_records, read_records  # the store only for this command
    from relay.store import Store

    source = load_sources(settings.mappings_dir).get(args.source)
    if source is None:
        print(f"relay: no source {args.source!r} in {settings.mappings_dir}", file=sys.stderr)
        return 1
    headers = _headers(args.header)
    query = _query(args.query)
    if headers is None or query is None:
        return 1
    headers = with_url_event(source, headers, query)  # InSales: the topic its hook URL names
    raw = sys.stdin.buffer if args.file == "-" else Path(args.file).open("rb")
    # utf-8-sig: a spreadsheet's CSV export often begins with a byte order mark, which is no column's name.
    # newline="": CSV cells may hold line breaks of their own, which the csv module reads.
    stream = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    records = read_records(stream, format_of(args.file, args.format))
    store = None if args.dry_run else Store(settings.database_url)
    try:
        counts = import_records(
            records, source, settings=settings, store=store, content_type=args.content_type, headers=headers
        )
    except UnicodeDecodeError:
        # The records before the bad bytes are stored: an import again takes them as duplicates.
        print(f"relay: {args.file} is not UTF-8 text; save the export as UTF-8", file=sys.stderr)
        return 1
    finally:
        stream.close()
        if store is not None:
            store.close()
    outcomes = ("accepted", "duplicate", "ignored", "ping", "unreadable")
    summary = {"source": source.name, "dry_run": args.dry_run, "records": sum(counts.values())}
    print(json.dumps(summary | {outcome: counts[outcome] for outcome in outcomes}))
    return 1 if counts["unreadable"] else 0
