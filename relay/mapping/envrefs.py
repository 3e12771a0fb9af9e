"""`${NAME}` and `${NAME:-default}` references in mapping files.

They stay references through loading and validation and are resolved only when
a request is verified or a call is built, so a secret never lands in a parsed,
stored or logged structure.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "EnvRef",
    "find_refs",
    "implied",
    "implied_names",
    "implied_refs",
    "is_ref",
    "parse_ref",
    "rebind_text",
    "rebound",
    "resolve_text",
    "text_pieces",
]

_WHOLE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?\}$", re.DOTALL)
_ANY = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_BROKEN = re.compile(r"\$\{(?![A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\})")


@dataclass(frozen=True)
class EnvRef:
    """One reference: the variable's name and its default, if any."""

    name: str
    default: str | None = None

    def resolve(self, env: Mapping[str, str]) -> str | None:
        value = env.get(self.name)
        if value is None or value == "":
            return self.default
        return value

    def __str__(self) -> str:
        return "${" + self.name + ("" if self.default is None else ":-" + self.default) + "}"


def is_ref(text: object) -> bool:
    return isinstance(text, str) and _WHOLE.match(text) is not None


def parse_ref(text: str) -> EnvRef | None:
    match = _WHOLE.match(text)
    return EnvRef(match.group(1), match.group(2)) if match else None


def find_refs(text: str) -> list[EnvRef]:
    return [piece for piece in _pieces(text) if isinstance(piece, EnvRef)]


def text_pieces(text: str) -> tuple[str | EnvRef, ...]:
    """`text` as literal parts and references, in order."""
    return _pieces(text)


def broken_ref(text: str) -> bool:
    """True when `text` has a `${` that does not open a well-formed reference."""
    return _BROKEN.search(text) is not None


def resolve_text(text: str, env: Mapping[str, str]) -> str:
    """Replace every reference in `text`; an unset one without default becomes ''."""
    if "${" not in text:  # most texts a translation resolves (tags, field names) have none
        return text
    return "".join(piece if isinstance(piece, str) else piece.resolve(env) or "" for piece in _pieces(text))


@functools.lru_cache(maxsize=1024)
def _pieces(text: str) -> tuple[str | EnvRef, ...]:
    """`text` split into literal parts and references, once per text: the texts are the mapping files'
    (`${RELAY_DB_ID:-1}`, a few per call), and the regular expression cost more than the lookups."""
    pieces: list[str | EnvRef] = []
    at = 0
    for match in _ANY.finditer(text):
        pieces.append(text[at : match.start()])
        pieces.append(EnvRef(match.group(1), match.group(2)))
        at = match.end()
    pieces.append(text[at:])
    return tuple(piece for piece in pieces if piece != "")


def missing(refs: Iterable[EnvRef], env: Mapping[str, str]) -> list[str]:
    """Names of referenced variables that are unset and have no default."""
    return sorted({ref.name for ref in refs if ref.resolve(env) is None})


# A file that extends another reads some of the base's settings otherwise (relay/mapping/extending.py); the
# schema's defaults that name a setting (a rule's `db_id`) must read them the same way while it is loaded.
_REBOUND: ContextVar[Mapping[str, str | int]] = ContextVar("relay_rebound_settings", default=MappingProxyType({}))
_IMPLIED: dict[str, None] = {}  # the default texts that name a setting, in the order the schema gives them


def rebind_text(text: str, settings: Mapping[str, str | int]) -> str | int:
    """`text` with each reference to a setting `settings` names replaced by what it gives; a text that is that
    reference alone becomes the value as given (a number stays one)."""
    if "${" not in text or not settings:
        return text
    pieces = _pieces(text)
    if len(pieces) == 1 and isinstance(pieces[0], EnvRef) and pieces[0].name in settings:
        return settings[pieces[0].name]
    return "".join(str(settings.get(piece.name, piece)) if isinstance(piece, EnvRef) else piece for piece in pieces)


def implied(text: str) -> Callable[[], str | int]:
    """A schema default that names a setting (`${RELAY_DB_ID:-1}`), read as the file being loaded reads it."""
    _IMPLIED[text] = None
    return functools.partial(_implied, text)


def _implied(text: str) -> str | int:
    return rebind_text(text, _REBOUND.get())


def implied_names() -> frozenset[str]:
    """The settings the schema's defaults name: every mapping file reads them, written or not."""
    return frozenset(ref.name for text in _IMPLIED for ref in find_refs(text))


def implied_refs(settings: Mapping[str, str | int]) -> list[EnvRef]:
    """The references of the schema's defaults as a file reads them: another setting's, for a file that
    extends another and rebinds one (`RELAY_DB_ID: ${EU_DB_ID}`)."""
    found = []
    for text in _IMPLIED:
        rebound = rebind_text(text, settings)
        if isinstance(rebound, str):
            found.extend(find_refs(rebound))
    return found


@contextmanager
def rebound(settings: Mapping[str, str | int]) -> Iterator[None]:
    """Load a file that extends another: the schema's defaults read `settings` as it does."""
    token = _REBOUND.set(settings)
    try:
        yield
    finally:
        _REBOUND.reset(token)
