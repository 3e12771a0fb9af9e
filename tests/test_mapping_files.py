"""Mapping files: validated with every problem reported as file:line key, secrets kept as references."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ConfigError, MappingError
from relay.mapping.loader import load_source_file, load_sources
from relay.mapping.translate import TranslateContext, translate

from .conftest import BUILT_IN_SOURCES, MAPPINGS, ROOT, relay_command

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
        (("source: demo", "source: " + "d" * 65), "source: lower-case letters, digits and _, at most 64"),
        (("source: demo", "source: demo-x"), "source: lower-case letters, digits and _, at most 64"),
        (('secret: "${DEMO_TOKEN}"', "secret: hunter2"), "auth.secret: secrets must be written as ${NAME} references"),
        (("path: email,", "path: 'email[',"), "rules.0.match.email.path: invalid expression"),
        (
            ("email: {path: email, transform: email}", "phone: {path: phone}"),
            "rules.0.match: matching 'email' needs match keys: email",
        ),
        (
            ("    match:", "    matching: [email, phone]\n    match:"),
            "rules.0.match: matching 'phone' needs match keys: phone",
        ),
        (("    match:", "    matching: [email, emale]\n    match:"), "rules.0.matching: unknown matching mode 'emale'"),
        (
            ("    match:", "    matching: [email, email]\n    match:"),
            "rules.0.matching: a matching mode is listed twice",
        ),
        (("    match:", "    matching: []\n    match:"), "rules.0.matching: a matching mode, or a list of them"),
        (("rules:", "accepted_status: 201\nrules:"), "demo.yaml:4 accepted_status: Must be one of: 200, 202."),
        (
            ("auth: {scheme: token,", "auth: {scheme: hmac, header: X-Sig, signed: '{timestap}.{body}',"),
            "auth.signed: signed has {timestap}; it takes {body}, {timestamp}, {method}, {url}, {header:<name>} "
            "and {field:<name>}",
        ),
        (
            ("rules:", "cors: {origins: ['https://www.example.com/']}\nrules:"),
            "cors.origins.0: an origin is scheme://host[:port] with no path (https://www.example.com), or *",
        ),
        (
            ("auth: {scheme: token,", "auth: {scheme: hmac, header: X-Sig, url_unescape: ':a/',"),
            "auth.url_unescape: url_unescape lists ASCII punctuation, such as :/?@",
        ),
        (
            ("auth: {scheme: token,", "auth: {scheme: hmac, header: X-Sig, hex_key: true, key_encoding: base64,"),
            "auth.hex_key: hex_key: true says key_encoding: hex; give one of them",
        ),
        (("rules:", "event: {query: token}\nrules:"), "event.query: `token` is the hook's secret, never an event"),
        (("rules:", "event: {query: 'a b'}\nrules:"), "event.query: a query parameter's name: letters, digits, _ . -"),
        (
            ("rules:", "event: {query: topic, header: X-Topic}\nrules:"),
            "event: event is taken from exactly one of header, path or query",
        ),
        (
            ("  - name: lead", "  - name: lead\n    events: [orders/create]"),
            "event: rules with `events` need an event: {header: ...}, {path: ...} or {query: ...}",
        ),
    ],
)
def test_problems_name_file_line_and_key(tmp_path, change, expected):
    """Each kind of mistake is reported with the file, line and key path."""
    _source, problems = load_source_file(write(tmp_path, GOOD.replace(*change)))
    assert any(expected in problem for problem in problems), problems


def test_a_rule_of_several_matching_modes_matches_by_the_first_the_payload_gives_keys_for(tmp_path):
    """`matching: [email, phone]`: by e-mail with the e-mail alone (a phone beside it could find a second
    profile), by phone when there is no usable e-mail, and a mapping error naming both when neither."""
    text = GOOD.replace(
        "    match:\n", "    matching: [email, phone]\n    match:\n      phone: {path: phone, transform: phone}\n"
    )
    source, problems = load_source_file(write(tmp_path, text))
    assert source is not None, problems

    def keys(payload: dict) -> dict:
        body = translate(source, payload, context=TranslateContext(phone_region="RU")).calls[0].body
        return {key: body[key] for key in ("matching", "email", "phone") if key in body}

    assert keys({"email": "A@Example.com", "phone": "89123456789"}) == {"matching": "email", "email": "a@example.com"}
    assert keys({"email": "not an address", "phone": "89123456789"}) == {"matching": "phone", "phone": "+79123456789"}
    assert keys({"phone": "89123456789"}) == {"matching": "phone", "phone": "+79123456789"}
    with pytest.raises(
        MappingError, match="rule 'lead' matches by email or phone but the payload gives no usable email or phone"
    ):
        translate(source, {"phone": "12"})


def test_every_problem_of_every_file_is_reported(tmp_path):
    """load_sources lists the problems of all files at once."""
    write(tmp_path, GOOD.replace("version: 1", "version: 3"))
    write(tmp_path, GOOD.replace("source: demo", "source: other").replace("name: lead", "name: Bad Name"), "other.yaml")
    with pytest.raises(ConfigError) as info:
        load_sources(tmp_path)
    text = "\n".join(info.value.problems)
    assert "demo.yaml:1 version" in text and "other.yaml:5 rules.0.name" in text


def test_a_rule_may_take_another_rules_keys_with_a_yaml_merge(tmp_path):
    """`<<: *anchor` gives the anchored rule's keys that the rule does not give itself; a problem in a merged
    key is reported at the rule that merges it, with the anchor's line; `<<` of anything but a mapping is
    refused."""
    text = GOOD.replace("  - name: lead", "  - &lead\n    name: lead").rstrip("\n") + (
        "\n  - <<: *lead\n    name: lead_again\n    events: [again]\nevent: {header: X-Event}\n"
    )
    source, problems = load_source_file(write(tmp_path, text))
    assert problems == [] and source is not None
    first, again = source.rules
    assert (again.name, again.events, again.match, again.fields) == (
        "lead_again",
        ("again",),
        first.match,
        first.fields,
    )
    broken = text.replace("transform: email}", "transform: emale}")
    _source, problems = load_source_file(write(tmp_path, broken))
    assert [Path(problem.split(" ", 1)[0]).name for problem in problems] == ["demo.yaml:8", "demo.yaml:8"], problems
    assert "rules.1.match.email" in problems[1], problems
    _source, problems = load_source_file(write(tmp_path, text.replace("<<: *lead", "<<: lead")))
    assert problems and "<< merges a mapping" in problems[0], problems


def test_unsafe_yaml_is_refused(tmp_path):
    """Python tags are refused by the safe loader."""
    _source, problems = load_source_file(write(tmp_path, GOOD + "x: !!python/object/apply:os.system ['true']\n"))
    assert problems and "not valid YAML" in problems[0]


@pytest.mark.parametrize("name", sorted(path.name for path in MAPPINGS.glob("*.yaml")))
def test_libyamls_parser_reads_each_built_in_file_as_pyyamls_own_does(name, monkeypatch):
    """Mapping files are composed by libyaml's parser when PyYAML has it (the pinned wheel does): each
    built-in file, anchors, merges and multi-line texts included, gives the same data and the same line for
    every key as with PyYAML's own parser."""
    import yaml

    from relay.mapping import yamlnodes

    assert yamlnodes._COMPOSER is yaml.CSafeLoader
    text = (MAPPINGS / name).read_text(encoding="utf-8")
    with_libyaml = yamlnodes.load_with_lines(text)
    monkeypatch.setattr(yamlnodes, "_COMPOSER", yaml.SafeLoader)
    assert yamlnodes.load_with_lines(text) == with_libyaml


def test_check_command_exits_1_listing_problems(tmp_path):
    """python -m relay check exits 1 and names file and key."""
    write(tmp_path, GOOD.replace("transform: [phone, list]", "transform: [e164x]"))
    result = relay_command("check", env={"PATH": "/usr/bin:/bin", "RELAY_MAPPINGS_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "demo.yaml:9 rules.0.fields.phones.transform.0: unknown transform 'e164x'" in result.stderr


def test_check_names_an_example_it_cannot_read_with_its_line(tmp_path):
    """An example edited by hand into invalid YAML (a description with `: ` in it) is one of check's problems,
    at its line, not a traceback."""
    write(tmp_path, GOOD)
    examples = tmp_path / "examples" / "demo"
    examples.mkdir(parents=True)
    (examples / "colon.yaml").write_text(
        "request: {body: '{}', content_type: application/json}\ndescription: sent as is: by default\n",
        encoding="utf-8",
    )
    result = relay_command("check", env={"PATH": "/usr/bin:/bin", "RELAY_MAPPINGS_DIR": str(tmp_path)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "colon.yaml:2 example cannot be read: not valid YAML: mapping values are not allowed here" in result.stderr


def test_check_passes_on_the_built_in_mappings():
    """The shipped mappings and all their examples pass check, and every rule is reached by an example."""
    result = relay_command("check", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert f"{len(BUILT_IN_SOURCES)} mapping files" in result.stdout
    assert "rules no example reaches" not in result.stdout


def test_check_names_the_rules_no_example_reaches(tmp_path):
    """A rule no example takes is named, without failing check: the examples prove the rules they reach,
    whether they forward (an example saved by `preview --save-example`), ignore or fail."""
    write(
        tmp_path,
        """version: 1
source: demo
auth: {scheme: token, secret: "${DEMO_TOKEN}"}
event: {path: topic}
rules:
  - name: lead
    events: [lead]
    match: {email: {path: email, transform: email}}
  - name: never_sent
    events: [other]
    ignore: nothing to do
  - name: failing
    events: [broken]
    match: {email: {path: missing, transform: email}}
""",
    )
    env = {"PATH": "/usr/bin:/bin", "RELAY_MAPPINGS_DIR": str(tmp_path)}
    lead = tmp_path / "lead.json"
    lead.write_text('{"topic": "lead", "email": "Ana@Example.com"}', encoding="utf-8")
    saved = relay_command("preview", "--source", "demo", str(lead), "--save-example", "lead", env=env)
    assert saved.returncode == 0, saved.stderr
    broken = 'request: {body: \'{"topic": "broken"}\', content_type: application/json}\nexpect: {error: no usable}\n'
    (tmp_path / "examples" / "demo" / "broken.yaml").write_text(broken, encoding="utf-8")
    result = relay_command("check", env=env)
    assert result.returncode == 0, result.stderr
    assert "ok: 1 mapping files, 2 examples" in result.stdout
    notes = result.stdout.split("rules no example reaches", 1)[1]
    assert "demo.yaml rules.1 (never_sent)" in notes
    assert "(lead)" not in notes and "(failing)" not in notes


GUIDE = ROOT / "mappings" / "README.md"


def _guide_files() -> dict[str, str]:
    """The guide's YAML blocks that begin with `# <path>`: the worked example's files, by path."""
    text = GUIDE.read_text(encoding="utf-8")
    files = {}
    for block in text.split("```yaml\n")[1:]:
        body = block.split("```", 1)[0]
        first, _, rest = body.partition("\n")
        if first.startswith("# mappings/"):
            files[first[2:].strip()] = rest
    return files


def test_the_guides_worked_example_passes_check_and_previews_as_its_example_says(tmp_path):
    """The mapping file and example written out in mappings/README.md are a working source: `check`
    passes them (the example's expected calls included), and `preview` of the example's body prints
    those calls. A guide that drifts from what relay does fails here."""
    import json

    import yaml

    files = _guide_files()
    assert set(files) == {"mappings/landing.yaml", "mappings/examples/landing/signup.yaml"}
    for path, text in files.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    example = yaml.safe_load(files["mappings/examples/landing/signup.yaml"])
    env = {"PATH": "/usr/bin:/bin", "RELAY_MAPPINGS_DIR": str(tmp_path / "mappings")}

    checked = relay_command("check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "ok: 1 mapping files, 1 examples" in checked.stdout
    previewed = relay_command(
        "preview",
        "--source",
        "landing",
        "--content-type",
        "application/json",
        "-",
        env=env,
        stdin=example["request"]["body"],
    )
    assert previewed.returncode == 0, previewed.stderr
    calls = json.loads(previewed.stdout)
    for call in calls:
        assert call["body"].pop("token") == "***"
    assert calls == example["expect"]["calls"]


def test_the_guide_names_every_key_transform_operator_mode_and_function():
    """Every key the schemas take, every transform, field operator, matching mode, channel and expression
    function appears in mappings/README.md: what a mapping file may say is all written down."""
    from marshmallow import Schema

    from relay.mapping import schema
    from relay.mapping.expressions import _RelayFunctions
    from relay.mapping.transforms import TRANSFORMS
    from relay.upstream.contract import CHANNELS, MATCHING_KEYS, MATCHING_MODES, OPERATORS

    guide = GUIDE.read_text(encoding="utf-8")
    names = set(TRANSFORMS) | set(OPERATORS) | set(MATCHING_MODES) | set(MATCHING_KEYS) | set(CHANNELS)
    names |= {name.removeprefix("_func_") for name in vars(_RelayFunctions) if name.startswith("_func_")}
    names |= schema.ValueField._KEYS
    for value in vars(schema).values():
        if isinstance(value, type) and issubclass(value, Schema) and value.__module__ == schema.__name__:
            names |= {field.data_key or name for name, field in value._declared_fields.items()}
    spans = re.findall(r"`([^`\n]+)`", guide)  # the guide's code, where keys and names are written
    missing = sorted(name for name in names if not any(re.search(rf"\b{name}\b", span) for span in spans))
    assert missing == []


_env_texts = st.lists(
    st.one_of(
        st.sampled_from(["${A}", "${B:-d}", "${C:-}", "${UNSET}", "${UNSET:-x y}", "${", "}", "$", ":-", "${1A}"]),
        st.text(alphabet="ab${}:-_ ", max_size=6),
    ),
    max_size=6,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=_env_texts)
def test_references_resolve_as_the_pattern_reads_them(text):
    """`resolve_text` splits each text into literals and references once (cached); what it gives is what
    substituting every match of the reference pattern gives, set, empty, unset and malformed alike."""
    from relay.mapping import envrefs

    env = {"A": "x", "B": "", "C": "y"}
    expected = envrefs._ANY.sub(lambda m: envrefs.EnvRef(m.group(1), m.group(2)).resolve(env) or "", text)
    assert envrefs.resolve_text(text, env) == expected
    assert envrefs.resolve_text(text, env) == expected  # from the cache


def test_the_readmes_shop_table_names_events_the_mappings_take():
    """Each event the README's shop table tells an operator to subscribe to is one its mapping has a rule or a
    fetch for (`subscription_*` stands for several; Adobe's are written without their `com.adobe.commerce.`
    prefix): a renamed or dropped event would have shops send webhooks that relay only ignores."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("### Shops: what to subscribe", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and not line.startswith("| -")]
    sources = load_sources(ROOT / "mappings")
    names = {"Stripe Checkout": "stripe", "Lemon Squeezy": "lemon_squeezy", "Adobe Commerce": "adobe_commerce"}
    # Taken by rules that name no event and tell the payloads apart by their shape, as InSales' addresses
    # registered without a topic name none.
    by_shape = {("insales", "orders/update"), ("insales", "client/create")}
    checked = 0
    for row in rows[1:]:
        shop, subscribe = row[0].removeprefix("| ").strip(), row[1]
        source = sources[names.get(shop, shop.lower())]
        events = {event for rule in source.rules for event in rule.events}
        events |= {event for spec in source.fetches for event in spec.events}
        for written in re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", subscribe)):  # not what is in brackets
            if "/" not in written and "." not in written and "_" not in written or (source.name, written) in by_shape:
                continue  # `update` after `checkouts/create`/
            assert any(fnmatch.fnmatch(event, written) or event.endswith("." + written) for event in events), (
                shop,
                written,
            )
            checked += 1
    assert checked >= 25


def test_every_setting_a_built_in_mapping_reads_is_named_in_the_readme():
    """An operator learns from the README which settings the built-in mappings read (`RELAY_REVENUE_FIELD`,
    `ECWID_CURRENCY`...). Two kinds are given there as patterns rather than by name: each source's
    `<SOURCE>_WEBHOOK_SECRET` or `_TOKEN`, and the `<SOURCE>_API_URL` a test or a provider's sandbox points
    a fetch at."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unnamed = set()
    for path in sorted((ROOT / "mappings").glob("*.yaml")):
        for name in re.findall(r"\$\{([A-Z][A-Z0-9_]*)", path.read_text(encoding="utf-8")):
            if re.fullmatch(r"[A-Z0-9_]+_(WEBHOOK_SECRET|WEBHOOK_TOKEN|API_URL)", name) is None and name not in readme:
                unnamed.add(f"{path.name}: {name}")
    assert not unnamed, sorted(unnamed)


def test_every_subscription_status_rule_replaces_the_readmes_status_tags():
    """A subscription's status is one tag from the README's list, named alike by every source (Stripe, Paddle,
    Lemon Squeezy, WooCommerce Subscriptions, Gumroad): each rule that tags a status removes the whole list (and
    may take off other tags, such as abandoned_checkout), so a change from one source replaces the tag another
    set."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = readme.split("`subscriber` with one of ", 1)[1].split(" (", 1)[0]
    statuses = set(re.findall(r"`(subscription_[a-z_]+)`", listed))
    assert len(statuses) == 7, statuses
    rules = [
        (source.name, rule)
        for source in load_sources(ROOT / "mappings").values()
        for rule in source.rules
        if rule.tags is not None and any("subscription_" in str(spec) for spec in rule.tags.add)
    ]
    assert {name for name, _rule in rules} == {"stripe", "paddle", "lemon_squeezy", "woocommerce", "gumroad"}
    for name, rule in rules:
        removed = {spec.template or spec.value or spec.path for spec in rule.tags.remove}
        removed_statuses = {tag for tag in removed if str(tag).startswith("subscription_")}
        assert removed_statuses == statuses, (name, rule.name, removed_statuses ^ statuses)
        for spec in rule.tags.add:  # a status read through a table gives only the listed tags
            for transform, arg in spec.transforms:
                if transform == "map":
                    assert set(arg["values"].values()) <= statuses, (name, rule.name)
