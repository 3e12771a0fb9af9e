"""A mapping file that `extends` another: a second account of a provider as a source of its own, in a few lines.

The file is the one mappings/README.md gives (a second Shopify store with its own secret and database), read
from the guide; the base is the built-in shopify.yaml. Through the real app and worker to the sandbox upstream
on loopback: each store's webhooks authenticate with their own secret only and land in their own database.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from relay.mapping.loader import load_source_file
from relay.mapping.watch import WatchedSources, sources_on_disk
from relay.sandbox import Sandbox, SandboxServer, default_config

from .conftest import (
    MAPPINGS,
    ROOT,
    SECRETS,
    captured_log_lines,
    drain,
    hand_driven,
    post_signed,
    quick_retry_settings,
    relay_command,
)

FIXTURES = Path(__file__).parent / "fixtures"
EU_SECRET = "shpss_eu_store_secret_51f0"


def _guides_extending_file() -> str:
    """The file mappings/README.md gives for a second Shopify store."""
    text = (ROOT / "mappings" / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    [extending] = [block for block in blocks if "extends: shopify" in block]
    return textwrap.dedent(extending)


EXTENDING = _guides_extending_file()


def _folder(tmp_path: Path, extending: str = EXTENDING) -> Path:
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    shutil.copy(MAPPINGS / "shopify.yaml", folder / "shopify.yaml")
    (folder / "shopify_eu.yaml").write_text(extending, encoding="utf-8")
    return folder


@pytest.fixture
def two_databases():  # type: ignore[no-untyped-def]
    """The sandbox with the EU store's database 7 beside database 1, both granted to relay's token."""
    config = default_config([SECRETS["RELAY_UPSTREAM_TOKEN"]])
    config["databases"]["7"] = json.loads(json.dumps(config["databases"]["1"]))
    config["tokens"][SECRETS["RELAY_UPSTREAM_TOKEN"]]["dbs"] = [1, 7]
    server = SandboxServer(Sandbox(config)).start()
    yield server
    server.stop()


def test_the_second_store_takes_its_own_secret_and_fills_its_own_database(tmp_path, two_databases):
    folder = _folder(tmp_path)
    settings = quick_retry_settings(
        tmp_path, two_databases, RELAY_MAPPINGS_DIR=str(folder), SHOPIFY_EU_WEBHOOK_SECRET=EU_SECRET
    )
    order = json.loads((FIXTURES / "shopify-orders-create.json").read_text(encoding="utf-8"))
    headers = {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "eu-1"}
    shopify = {"header": "X-Shopify-Hmac-Sha256", "headers": headers}
    for client, store, worker in hand_driven(settings):
        with captured_log_lines() as lines:
            # The first store's secret does not open the second store's hook, nor the other way round.
            refused = post_signed(client, "shopify_eu", order, secret=SECRETS["SHOPIFY_WEBHOOK_SECRET"], **shopify)
            assert refused.status_code == 401
            assert post_signed(client, "shopify", order, secret=EU_SECRET, **shopify).status_code == 401
            eu = post_signed(client, "shopify_eu", order, secret=EU_SECRET, **shopify)
            assert eu.status_code == 202, eu.get_json()
            # The same order's webhook to the first store is its own delivery, not a duplicate of the other.
            home = post_signed(client, "shopify", order, secret=SECRETS["SHOPIFY_WEBHOOK_SECRET"], **shopify)
            assert home.status_code == 202, home.get_json()
            assert drain(store, worker, eu.get_json()["id"]) == "delivered"
            assert drain(store, worker, home.get_json()["id"]) == "delivered"
        assert store.get(eu.get_json()["id"]).source == "shopify_eu"
        assert [call["body"]["db_id"] for call in store.get(eu.get_json()["id"]).calls] == [7]
        assert [call["body"]["db_id"] for call in store.get(home.get_json()["id"]).calls] == [1]
    profiles = sorted((profile.db_id, profile.fields["email"]) for profile in two_databases.sandbox.profiles.values())
    assert profiles == [(1, order["email"]), (7, order["email"])]
    assert not any(EU_SECRET in line for line in lines)


def _tags_added(source, rule_name):  # type: ignore[no-untyped-def]
    [rule] = [rule for rule in source.rules if rule.name == rule_name]
    return [tag.template for tag in rule.tags.add]


def test_a_fix_to_the_base_reaches_the_extending_source_in_the_worker(tmp_path):
    folder = _folder(tmp_path)
    watched = WatchedSources(folder, recheck=0)
    assert _tags_added(watched.current()["shopify_eu"], "order_created") == ["shopify", "order_created"]
    base = folder / "shopify.yaml"
    base.write_text(
        base.read_text(encoding="utf-8").replace("add: [shopify, order_created]", "add: [shopify, order_placed]"),
        encoding="utf-8",
    )
    assert _tags_added(watched.current()["shopify_eu"], "order_created") == ["shopify", "order_placed"]
    assert watched.current()["shopify_eu"].extension.settings == (
        ("SHOPIFY_WEBHOOK_SECRET", "${SHOPIFY_EU_WEBHOOK_SECRET}"),
        ("RELAY_DB_ID", 7),
    )


def test_the_admin_apis_load_of_the_folder_is_reused_until_a_file_changes(tmp_path):
    """Previews and dry runs read the files as they are on disk, without loading the folder at each call."""
    folder = _folder(tmp_path)
    first = sources_on_disk(folder)
    assert sources_on_disk(folder) is first  # nothing changed: the same load
    base = folder / "shopify.yaml"
    base.write_text(
        base.read_text(encoding="utf-8").replace("add: [shopify, order_created]", "add: [shopify, order_placed]"),
        encoding="utf-8",
    )
    again = sources_on_disk(folder)
    assert again is not first
    assert _tags_added(again[0]["shopify_eu"], "order_created") == ["shopify", "order_placed"]
    (folder / "shopify.yaml").write_text("version: 1\nrules: [\n", encoding="utf-8")
    sources, broken = sources_on_disk(folder)
    assert "shopify" in broken and "shopify" not in sources


def test_settings_are_rebound_in_keys_texts_and_the_rules_defaults(tmp_path):
    """A field named by a setting, a setting inside a text, and the tags field no rule writes (a default)."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "landing.yaml").write_text(
        textwrap.dedent(
            """\
            version: 1
            source: landing
            auth: {scheme: token, secret: "${LANDING_WEBHOOK_TOKEN}"}
            rules:
              - name: signup
                match: {email: {path: email, transform: email}}
                fields:
                  email: {path: email, transform: email}
                  ${LANDING_SITE_FIELD:-site}: {value: "landing-${LANDING_SITE:-main}"}
                tags: {add: [signup]}
            """
        ),
        encoding="utf-8",
    )
    (folder / "promo.yaml").write_text(
        textwrap.dedent(
            """\
            version: 1
            source: promo
            extends: landing
            settings:
              LANDING_WEBHOOK_TOKEN: ${PROMO_WEBHOOK_TOKEN:-}
              LANDING_SITE_FIELD: origin
              LANDING_SITE: promo
              RELAY_TAGS_FIELD: labels
            """
        ),
        encoding="utf-8",
    )
    promo, problems = load_source_file(folder / "promo.yaml")
    assert promo is not None, problems
    [rule] = promo.rules
    assert promo.auth.secrets == ("${PROMO_WEBHOOK_TOKEN:-}",)
    assert set(rule.fields) == {"email", "origin"}
    assert rule.fields["origin"].value.value == "landing-promo"
    assert rule.tags.field == "labels"
    assert (rule.db_id, promo.description, promo.file) == ("${RELAY_DB_ID:-1}", "", str(folder / "promo.yaml"))
    landing, _ = load_source_file(folder / "landing.yaml")
    assert landing is not None and landing.rules[0].tags.field == "${RELAY_TAGS_FIELD:-tags}"  # the base's own


@pytest.mark.parametrize(
    ("extending", "problem"),
    [
        (
            "settings: {SHOPIFY_WEBHOOK_SECRET: shpss_written_here}\n",
            "shopify_eu.yaml:5 settings.SHOPIFY_WEBHOOK_SECRET: shopify.yaml reads it as a secret: give the name of "
            "another setting, ${NAME}, never the secret itself",
        ),
        ("settings: {RELAY_DBID: 7}\n", "settings.RELAY_DBID: shopify.yaml reads no setting RELAY_DBID (it reads"),
        ("settings: {RELAY_DB_ID: '${EU_DB'}\n", "settings.RELAY_DB_ID: malformed reference"),
        ("settings: {RELAY_DB_ID: true}\n", "settings.RELAY_DB_ID: text, a whole number or a ${NAME} reference"),
        (
            "settings: {RELAY_EMAIL_RESOURCE_ID: first}\n",
            "shopify_eu.yaml:5 with its settings, ",
        ),
        ("rules: []\n", "rules: a file that extends another takes only version, source, extends, description and"),
    ],
)
def test_an_extending_file_that_does_not_load_says_why(tmp_path, extending, problem):
    head = "version: 1\nsource: shopify_eu\nextends: shopify\ndescription: The EU store.\n"
    folder = _folder(tmp_path, head + extending)
    source, problems = load_source_file(folder / "shopify_eu.yaml")
    assert source is None and any(problem in found for found in problems), problems
    assert not any("shpss_written_here" in found for found in problems)


@pytest.mark.parametrize(
    ("base", "problem"),
    [
        (None, "extends: no mapping file shopify.yaml beside this one"),
        ("version: 1\nsource: shopify\nextends: tilda\n", "shopify.yaml extends 'tilda' itself; extend that file"),
        ("version: [1\n", "shopify.yaml does not load: "),
    ],
)
def test_the_base_must_be_a_file_beside_it_that_extends_none(tmp_path, base, problem):
    folder = _folder(tmp_path)
    if base is None:
        (folder / "shopify.yaml").unlink()
    else:
        (folder / "shopify.yaml").write_text(base, encoding="utf-8")
    source, problems = load_source_file(folder / "shopify_eu.yaml")
    assert source is None and any(problem in found for found in problems), problems


def test_a_yml_file_extends_a_yaml_one_and_its_problems_name_the_base_line(tmp_path):
    folder = _folder(tmp_path)
    (folder / "shopify_eu.yaml").rename(folder / "shopify_eu.yml")
    source, problems = load_source_file(folder / "shopify_eu.yml")
    assert source is not None and source.extension.file == str(folder / "shopify.yaml"), problems
    (folder / "shopify_eu.yml").write_text(
        "version: 1\nsource: shopify_eu\nextends: shopify\nsettings: {RELAY_EMAIL_RESOURCE_ID: first}\n",
        encoding="utf-8",
    )
    problems = load_source_file(folder / "shopify_eu.yml")[1]
    line = next(
        number
        for number, text in enumerate((folder / "shopify.yaml").read_text(encoding="utf-8").splitlines(), 1)
        if "${RELAY_EMAIL_RESOURCE_ID" in text
    )
    assert f"shopify_eu.yml:4 with its settings, {folder / 'shopify.yaml'}:{line} rules." in problems[0], problems


def test_a_file_extends_neither_itself_nor_under_another_name(tmp_path):
    folder = _folder(tmp_path, "version: 1\nsource: shopify_eu\nextends: shopify_eu\n")
    assert "extends: a file cannot extend itself" in " ".join(load_source_file(folder / "shopify_eu.yaml")[1])
    (folder / "shopify_eu.yaml").write_text("version: 1\nsource: shopify_us\nextends: shopify\n", encoding="utf-8")
    problems = load_source_file(folder / "shopify_eu.yaml")[1]
    assert "source: 'shopify_us' must match the file name 'shopify_eu'" in " ".join(problems)


def test_check_sources_and_preview_take_the_extending_file(tmp_path):
    folder = _folder(tmp_path)
    shutil.copytree(MAPPINGS / "examples" / "shopify", folder / "examples" / "shopify")
    env = {"RELAY_MAPPINGS_DIR": str(folder), "SHOPIFY_EU_WEBHOOK_SECRET": EU_SECRET}
    checked = relay_command("check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("ok: 2 mapping files")  # the base's examples prove the rules
    assert "rules no example reaches" not in checked.stdout
    listed = relay_command("sources", env=env)
    assert "extends:  shopify, reading SHOPIFY_WEBHOOK_SECRET: ${SHOPIFY_EU_WEBHOOK_SECRET}, RELAY_DB_ID: 7" in (
        listed.stdout
    )
    assert "about:    shop: The EU store's orders, into the EU database." in listed.stdout
    assert EU_SECRET not in listed.stdout + checked.stdout
    previewed = relay_command(
        "preview",
        "--source",
        "shopify_eu",
        str(FIXTURES / "shopify-orders-create.json"),
        "--header",
        "X-Shopify-Topic: orders/create",
        env=env,
    )
    assert previewed.returncode == 0, previewed.stderr
    assert [call["body"]["db_id"] for call in json.loads(previewed.stdout)] == [7]


def test_a_saved_example_and_check_read_the_setting_a_default_is_rebound_to(tmp_path):
    """The rules' `db_id` is the schema's default, `${RELAY_DB_ID:-1}`, written in no file: rebound to
    `${EU_DB_ID}`, it is a setting the source reads like any other, which an example saved now records and
    `check` names while it is unset."""
    folder = _folder(
        tmp_path,
        "version: 1\nsource: shopify_eu\nextends: shopify\n"
        "settings: {SHOPIFY_WEBHOOK_SECRET: '${SHOPIFY_EU_WEBHOOK_SECRET}', RELAY_DB_ID: '${EU_DB_ID}'}\n",
    )
    shutil.copytree(MAPPINGS / "examples" / "shopify", folder / "examples" / "shopify")
    env = {"RELAY_MAPPINGS_DIR": str(folder), "SHOPIFY_EU_WEBHOOK_SECRET": EU_SECRET}
    unset = relay_command("check", env=env)
    assert unset.returncode == 0, unset.stderr
    assert "\n  EU_DB_ID: shopify_eu\n" in unset.stdout
    order = str(FIXTURES / "shopify-orders-create.json")
    saved = relay_command(
        "preview",
        "--source",
        "shopify_eu",
        order,
        "--header",
        "X-Shopify-Topic: orders/create",
        "--save-example",
        "eu-order",
        env={**env, "EU_DB_ID": "9"},
    )
    assert saved.returncode == 0, saved.stderr
    assert [call["body"]["db_id"] for call in json.loads(saved.stdout)] == [9]
    example = yaml.safe_load((folder / "examples" / "shopify_eu" / "eu-order.yaml").read_text(encoding="utf-8"))
    assert example["env"] == {"SHOPIFY_EU_WEBHOOK_SECRET": "not-shown", "EU_DB_ID": "9"}
    assert [call["body"]["db_id"] for call in example["expect"]["calls"]] == [9]
    assert relay_command("check", env=env).returncode == 0  # the example runs with its own settings
