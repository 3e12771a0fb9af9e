"""What each source is and still needs, in words: `relay sources` prints it, `GET /admin/api/sources` gives it.

A description names the settings a source reads and whether they are set, never their values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.mapping import envrefs
from relay.mapping.delays import seconds_of
from relay.mapping.fetches import unset_settings
from relay.mapping.model import DelaySpec, FieldSpec, OrderSpec, Rule, Source
from relay.mapping.translate import unset_order_settings
from relay.settings import Settings

__all__ = ["describe_source", "source_lines"]


def describe_source(source: Source, settings: Settings) -> dict[str, Any]:
    """One source as JSON: hook URL, authentication, readiness and what still holds it back, its rules."""
    env = settings.env
    auth = source.auth
    refs = [ref for ref in (envrefs.parse_ref(text) for text in auth.secrets) if ref is not None]
    missing = [ref.name for ref in refs if ref.resolve(env) is None]
    # The settings the rules' fetches need (the API's token): unset, its webhooks are kept and fail as
    # mapping. One only an order reads holds back the order alone, and is said on its own line.
    needed = {name for spec in source.rule_fetches if not spec.optional for name in unset_settings(spec, env)}
    missing += sorted(needed - set(missing))
    state = f"NOT READY: set {', '.join(missing)}" if missing else "ready"
    if auth.scheme == "none" and not missing:
        state = "ready (unauthenticated)"
    fetches = []
    for spec in source.fetches:
        unset = unset_settings(spec, env)
        note = f"optional: skipped while {_are_unset(unset)}" if spec.optional and unset else None
        own = [name for name in unset if name not in missing]  # those that hold back the whole source are said
        if spec.order_only and own and not spec.optional:
            note = f"while {_are_unset(own)}, the profile goes and the order fails as mapping"
        fetches.append(
            {
                "name": spec.name,
                "url": spec.url,
                "read_by": "the order section" if spec.order_only else "the rules",
                "note": note,
            }
        )
    return {
        "name": source.name,
        "kind": source.kind,
        "description": source.description,
        "url": f"{settings.public_url or ''}/hooks/{source.name}",
        "extends": None
        if source.extension is None
        else {"source": source.extension.base, "settings": dict(source.extension.settings)},
        "auth": {"scheme": auth.scheme, "how": _how(source), "settings": [ref.name for ref in refs]},
        "ready": not missing,
        "missing": missing,
        "status": state,
        "event_query": source.event_query,
        "challenge_query": source.challenge_query,
        "fetches": fetches,
        "delays": [_delay(spec, env) for spec in source.delays],
        "cors_origins": list(source.cors_origins),
        "signs_url": auth.signs_url,
        "rules": [{"name": rule.name, "events": list(rule.events), "does": _does(rule, env)} for rule in source.rules],
    }


def source_lines(described: Mapping[str, Any], settings: Settings) -> list[str]:
    """`relay sources`' lines for one described source."""
    lines = [described["name"]]
    if described["description"]:
        lines.append(f"  about:    {described['kind']}: {described['description']}")
    lines.append(f"  url:      {described['url']}")
    if described["extends"] is not None:
        given = ", ".join(f"{key}: {value}" for key, value in described["extends"]["settings"].items())
        lines.append(f"  extends:  {described['extends']['source']}" + (f", reading {given}" if given else ""))
    auth = described["auth"]
    lines.append(f"  auth:     {auth['how']}" + (f" from {', '.join(auth['settings'])}" if auth["settings"] else ""))
    lines.append(f"  status:   {described['status']}")
    if described["event_query"]:
        named = sorted({event for rule in described["rules"] for event in rule["events"]})
        lines.append(
            f"  event:    named by the hook URL, ?{described['event_query']}=<event>"
            + (f" ({', '.join(named)})" if named else "")
        )
    if described["challenge_query"]:
        lines.append(f"  checks:   a GET with ?{described['challenge_query']}=<value> is answered with the value")
    for fetch in described["fetches"]:
        note = f" ({fetch['note']})" if fetch["note"] else ""
        lines.append(
            f"  fetches:  {fetch['name']}: GET {fetch['url']}, read by {fetch['read_by']} as fetched.{fetch['name']}"
            + note
        )
    for delay in described["delays"]:
        setting = (
            f" ({delay['setting']}{'; ' + delay['problem'] if delay['problem'] else ''})" if delay["setting"] else ""
        )
        lines.append(
            f"  waits:    {', '.join(delay['events'])}: taken by the worker {delay['seconds']} s after it arrives"
            + setting
            + (f", only the last of each {delay['latest_by']}" if delay["latest_by"] else "")
            + (f", the newest by {delay['ordered_by']}" if delay["ordered_by"] else "")
        )
    if described["cors_origins"]:
        lines.append(f"  browsers: pages that may post here: {', '.join(described['cors_origins'])}")
    if described["signs_url"] and not settings.public_url:
        lines.append(
            "  note:     signs the URL it calls: set RELAY_PUBLIC_URL to relay's address as the provider "
            "calls it (else the scheme and host come from the request)"
        )
    rules = [
        f"{rule['name']}: {', '.join(rule['events']) if rule['events'] else 'any event'} -> {rule['does']}"
        for rule in described["rules"]
    ]
    lines.append("  rules:    " + "\n            ".join(rules))
    return lines


def _delay(spec: DelaySpec, env: Mapping[str, str]) -> dict[str, Any]:
    wait = seconds_of(spec, env)
    ref = envrefs.parse_ref(spec.seconds) if isinstance(spec.seconds, str) else None
    return {
        "events": list(spec.events),
        "seconds": wait.seconds,
        "setting": ref.name if ref is not None else None,
        "problem": wait.problem,
        "latest_by": spec.latest_by,
        "ordered_by": spec.ordered_by,
    }


def _how(source: Source) -> str:
    auth = source.auth
    if auth.scheme == "hmac":
        return f"HMAC-{auth.algorithm.upper()} in {auth.header}"
    if auth.scheme == "token":
        how = "token in ?token= or X-Relay-Token" + (f" or {auth.header}: {auth.prefix}<token>" if auth.header else "")
        return how + (f" or the body field {auth.body_field}" if auth.body_field else "")
    if auth.scheme == "rsa":
        return (
            f"RSA-SHA256 in {' or '.join(header for header, _path in auth.rsa_signatures)}, keys from "
            f"{auth.keys_url}, the body's {auth.recipient_field} equal to the value"
        )
    return "none"


def _does(rule: Rule, env: Mapping[str, str]) -> str:
    what = rule.method
    if rule.ignore is not None:
        what = f"ignored ({rule.ignore})"
    elif rule.keep is not None:
        what = f"kept unsent, to replay ({rule.keep})"
    elif rule.forget is not None:
        what = f"forgets the stored deliveries naming the person (by {', '.join(rule.forget)})"
    if rule.forwards and len(rule.matching) > 1:
        what += f" (by {', else '.join(rule.matching)})"
    for setting in _optional_fields_off(rule.fields, env) if rule.forwards else []:
        what += f" (the field {setting} names: left out while unset)"
    if rule.order is not None and rule.forwards:
        what += " + market/orders/import" + _order_state(rule.order, env)
    if rule.once is not None:
        key = rule.once.template or rule.once.path or rule.once.value
        what += f", once per {key!r}"
    return what


def _are_unset(names: list[str]) -> str:
    return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} unset"


def _optional_fields_off(fields: Mapping[str, FieldSpec], env: Mapping[str, str]) -> list[str]:
    """The settings that name a rule's optional fields (`${RELAY_RECOVERY_URL_FIELD:-}`) and are unset."""
    off = []
    for name in fields:
        ref = envrefs.parse_ref(name)
        if ref is not None and ref.default == "" and not ref.resolve(env):
            off.append(ref.name)
    return off


def _order_state(order: OrderSpec, env: Mapping[str, str]) -> str:
    """Whether a rule's order goes out with these settings: its endpoint, when a setting names it."""
    endpoint = order.values["endpoint"].value
    if not isinstance(endpoint, str) or "${" not in endpoint:
        return ""  # read from the payload, or written in the file
    if not envrefs.resolve_text(endpoint, env):
        names = ", ".join(ref.name for ref in envrefs.find_refs(endpoint))
        return f" (off while {names} is unset)"
    unset = sorted({name for names in unset_order_settings(order, env).values() for name in names})
    held = f"; held back while {', '.join(unset)} is unset" if unset else ""
    return f" (endpoint {envrefs.resolve_text(endpoint, env)}{held})"
