"""`python -m relay <command>`: run, worker, preview, import, copy-store, check, sources, deliveries, overview,
replay, forget, sandbox."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from relay.errors import ConfigError, StoreUnavailable, first_line
from relay.settings import Settings

__all__ = ["main", "reported"]

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m relay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="web server and delivery worker together")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)

    worker = commands.add_parser("worker", help="the delivery worker alone")
    # Given by `relay run`, which checked the mapping files itself: one broken in the moment since is left
    # out with a log line (its deliveries wait), rather than stop the worker and with it relay.
    worker.add_argument("--mappings-checked", action="store_true", help=argparse.SUPPRESS)

    preview = commands.add_parser("preview", help="translate a payload file, or a stored delivery, and print the calls")
    preview.add_argument("--source")
    preview.add_argument("file", nargs="?", help="payload file, or - for stdin")
    preview.add_argument(
        "--delivery",
        metavar="ID",
        type=_delivery_id,
        help="instead of --source and a file: a stored delivery's request, translated as a replay would now",
    )
    preview.add_argument("--content-type", dest="content_type")
    preview.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    preview.add_argument(
        "--query",
        action="append",
        default=[],
        help="'name=value', a parameter of the hook URL as the provider calls it (?topic=orders/create), repeatable",
    )
    preview.add_argument("--client-ip", dest="client_ip")
    preview.add_argument("--format", choices=["json", "xml"], default="json")
    preview.add_argument(
        "--fetched",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="the provider API's answer to a fetch the mapping makes (fetched.NAME), as a JSON file; repeatable",
    )
    preview.add_argument(
        "--once-taken",
        action="append",
        default=[],
        metavar="KEY",
        help="a rule's once key an earlier delivery took (the rule is passed over); repeatable. With --delivery "
        "the store says which are taken",
    )
    preview.add_argument(
        "--save-example",
        metavar="NAME",
        help="also write the request as the source's example mappings/examples/<source>/NAME.yaml, expecting "
        "what relay does with it now (with the settings its mapping reads, secrets written not-shown)",
    )
    preview.add_argument("--description", help="the saved example's description")

    imported = commands.add_parser(
        "import", help="store past webhooks from a file (JSON Lines, a JSON array, or CSV) as a source's, to deliver"
    )
    imported.add_argument("--source", required=True)
    imported.add_argument("file", help="the file, or - for stdin (JSON Lines unless --format says otherwise)")
    imported.add_argument(
        "--format", choices=("jsonl", "json", "csv"), help="by default by the file's suffix (.csv, .json), else jsonl"
    )
    imported.add_argument(
        "--content-type",
        dest="content_type",
        default="application/json",
        help="how each record is stored, as its provider posts it: application/json (the default) or "
        "application/x-www-form-urlencoded",
    )
    imported.add_argument(
        "--header", action="append", default=[], help="'Name: value' sent with every record (a topic), repeatable"
    )
    imported.add_argument(
        "--query",
        action="append",
        default=[],
        help="'name=value', a parameter of the hook URL the records came to (?topic=orders/create), repeatable",
    )
    imported.add_argument(
        "--dry-run", action="store_true", help="count what would be stored, ignored or refused; store nothing"
    )

    copied = commands.add_parser(
        "copy-store",
        help="copy the store relay uses (RELAY_DATABASE_URL) into another, empty one: to move to PostgreSQL",
    )
    copied.add_argument("--to", required=True, metavar="URL", help="the new store's SQLAlchemy URL")

    check = commands.add_parser("check", help="validate every mapping file and run its examples")
    check.add_argument(
        "--upstream",
        action="store_true",
        help="also ask the upstream (RELAY_UPSTREAM_URL) whether it answers and takes RELAY_UPSTREAM_TOKEN; "
        "nothing is written",
    )
    sources = commands.add_parser("sources", help="list sources, their hook URLs and authentication")
    sources.add_argument("--json", action="store_true", help="as the admin API's /admin/api/sources gives them")

    deliveries = commands.add_parser("deliveries", help="list deliveries, or show one")
    deliveries.add_argument("id", nargs="?", type=_delivery_id)
    _add_filters(deliveries)
    deliveries.add_argument("--limit", type=_positive_count, default=50)
    deliveries.add_argument(
        "--before", metavar="ID", type=_delivery_id, help="the page after this delivery (newest first)"
    )
    deliveries.add_argument(
        "--contact",
        metavar="EMAIL_OR_PHONE",
        help="only deliveries that name this person (their calls, or the payload of one not translated)",
    )
    deliveries.add_argument("--json", action="store_true", help="one JSON object a line (the admin API's), for scripts")
    deliveries.add_argument(
        "--follow",
        action="store_true",
        help="keep printing: each delivery as it arrives, and again as its status changes, until Ctrl-C",
    )

    overview = commands.add_parser("overview", help="deliveries at a glance: by status, reason and source")
    overview.add_argument("--source", type=_source)
    overview.add_argument("--since", type=_time, help="ISO 8601 time or epoch seconds")
    overview.add_argument("--until", type=_time, help="ISO 8601 time or epoch seconds")
    overview.add_argument("--json", action="store_true", help="the admin API's JSON instead of a table")

    replay = commands.add_parser("replay", help="replay one delivery, or all that match a filter")
    replay.add_argument("id", nargs="?", type=_delivery_id)
    _add_filters(replay)
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="count what the filter would replay, by status and reason; change nothing",
    )

    forget = commands.add_parser(
        "forget", help="delete every stored delivery that names a person (an erasure request), with its attempts"
    )
    forget.add_argument("contact", metavar="EMAIL_OR_PHONE")
    forget.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")

    sandbox = commands.add_parser("sandbox", help="a local stand-in for the upstream API")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8900)
    sandbox.add_argument("--token", action="append", default=[], help="a valid API token (repeatable)")
    sandbox.add_argument(
        "--config",
        help='JSON file with databases, resources, segments, tokens ({"dbs": [1], "market": true}) and the '
        "market module's currencies",
    )
    sandbox.add_argument("--quiet", action="store_true", help="do not print each call")
    return parser


def _add_filters(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--status",
        type=_status,
        help="queued, delivering, delivered, retrying, held or failed; failed/mapping, failed/rejected or "
        "failed/exhausted for one reason",
    )
    command.add_argument("--source", type=_source)
    command.add_argument("--since", type=_time, help="ISO 8601 time or epoch seconds")
    command.add_argument("--until", type=_time, help="ISO 8601 time or epoch seconds")
    command.add_argument(
        "--event", help="the event the request names, as its mapping reads it (orders/paid, checkout.session.completed)"
    )


def _status(text: str) -> str:
    from relay.delivery_views import checked_status  # the store only for the commands using it

    return _argument(checked_status, text)


def _source(text: str) -> str:
    from relay.delivery_views import checked_source

    return _argument(checked_source, text)


def _delivery_id(text: str) -> str:
    from relay.delivery_views import checked_id

    return _argument(checked_id, text)


def _time(text: str) -> float | None:
    from relay.delivery_views import checked_time

    return _argument(checked_time, text)


def _argument(check: Callable[[str], T], text: str) -> T:
    """The admin API's own check of a filter, its ValueError turned into argparse's error."""
    try:
        return check(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


BROKEN_PIPE_EXIT = 141


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(exc.report("settings"), file=sys.stderr)
        return 2
    handler = _COMMANDS[args.command]
    return reported(lambda: handler(args, settings), settings)


def reported(call: Callable[[], int], settings: Settings) -> int:
    """`call`'s exit status; for what a command may meet (wrong settings or files, a store that fails, a
    file that cannot be read, a reader that has gone), one line on stderr and its status instead of a
    traceback."""
    try:
        code = int(call())
        sys.stdout.flush()  # a reader that has gone shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        # `relay deliveries | head`: the reader has what it wanted. Stop quietly, as other Unix tools do
        # (they die of SIGPIPE: 128 + 13), without a last failing flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
    except ConfigError as exc:
        print("relay: " + "\n  ".join(exc.problems), file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"relay: the store at {_where(settings)} failed: {exc.reason}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file that cannot be read, a folder that cannot be made
        print(f"relay: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"relay: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError  # only when something failed: most commands need no store

        if not isinstance(exc, SQLAlchemyError):
            raise
        print(f"relay: the store at {_where(settings)} failed: {first_line(exc)}", file=sys.stderr)
        return 1


def _where(settings: Settings) -> str:
    return settings.describe()["RELAY_DATABASE_URL"]  # the password masked


def _lazy(module: str, function: str):  # type: ignore[no-untyped-def]
    def call(args: argparse.Namespace, settings: Settings) -> int:
        import importlib

        return importlib.import_module(module).__dict__[function](args, settings)  # type: ignore[no-any-return]

    return call


_COMMANDS = {
    "preview": _lazy("relay.source_cli", "cmd_preview"),
    "check": _lazy("relay.source_cli", "cmd_check"),
    "sources": _lazy("relay.source_cli", "cmd_sources"),
    "import": _lazy("relay.source_cli", "cmd_import"),
    "run": _lazy("relay.serve", "cmd_run"),
    "worker": _lazy("relay.worker", "cmd_worker"),
    "deliveries": _lazy("relay.admin_cli", "cmd_deliveries"),
    "replay": _lazy("relay.admin_cli", "cmd_replay"),
    "overview": _lazy("relay.admin_cli", "cmd_overview"),
    "forget": _lazy("relay.admin_cli", "cmd_forget"),
    "sandbox": _lazy("relay.sandbox", "cmd_sandbox"),
    "copy-store": _lazy("relay.store_copy", "cmd_copy_store"),
}
