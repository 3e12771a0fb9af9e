"""Marshmallow schemas of a mapping file (`version: 1`).

Every schema keeps `unknown = RAISE`, so a misspelt key is an error that names
the key. Each schema's `post_load` returns the frozen dataclass of `model.py`.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from relay.mapping import envrefs
from relay.mapping.expressions import expression_problem
from relay.mapping.model import (
    MAX_DELAY_SECONDS,
    SIGNED_PLACEHOLDER,
    AuthSpec,
    DelaySpec,
    FetchSpec,
    FieldSpec,
    LinesSpec,
    OrderSpec,
    PingSpec,
    Rule,
    SubscriptionSpec,
    TagsSpec,
    ValueSpec,
)
from relay.mapping.transforms import check_transform_arg
from relay.upstream.contract import (
    CHANNEL_IDENTITY,
    CHANNELS,
    MATCHING_KEYS,
    MATCHING_MODES,
    OPERATORS,
    PROFILE_METHODS,
)

__all__ = ["SOURCE_NAME", "MappingFileSchema"]

SOURCE_NAME = re.compile(r"[a-z0-9_]{1,64}\Z")  # a source's name: its hook URL, its files, a store column of 64
HEADER_NAME_PATTERN = r"\A[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}\Z"
HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
# A top-level field of a JSON body that auth reads (a signed timestamp, a recipient).
TOP_LEVEL_FIELD = validate.Regexp(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z", error="a top-level field's name")


def _query_parameter(use: str) -> list[validate.Validator]:
    """A parameter of the hook's URL that a mapping names; never `token`, the hook's secret."""
    return [
        validate.Regexp(r"\A[A-Za-z0-9_.-]{1,64}\Z", error="a query parameter's name: letters, digits, _ . -"),
        validate.NoneOf(["token"], error=f"`token` is the hook's secret, never {use}"),
    ]


class CheckedText(fields.String):
    """Text that `problem` finds nothing wrong with when the file loads."""

    def problem(self, text: str) -> str | None:
        return None

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        problem = self.problem(text)
        if problem:
            raise ValidationError(problem)
        return text


class Expression(CheckedText):
    """A JMESPath expression."""

    def problem(self, text: str) -> str | None:
        return expression_problem(text)


class EnvOr(fields.Field[Any]):
    """A literal of `kind` (int, str or bool), or a `${NAME}` reference resolved later."""

    def __init__(self, kind: type, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and "${" in value:
            ref = envrefs.parse_ref(value)
            if ref is None:
                raise ValidationError(f"malformed reference {value!r}; write ${{NAME}} or ${{NAME:-default}}")
            if ref.default is not None and self.kind is int:
                try:
                    int(ref.default)
                except ValueError:
                    raise ValidationError(f"default of {value} must be a whole number") from None
            return value
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValidationError("must be a whole number or a ${NAME} reference")
        if self.kind is str and not isinstance(value, str):
            raise ValidationError("must be text or a ${NAME} reference")
        return value


class MatchingModes(fields.Field[Any]):
    """A matching mode, or a list of them in order of preference: `[email, phone]` matches by e-mail, or by
    phone when the payload gives no usable e-mail."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> tuple[str, ...]:
        modes = value if isinstance(value, list) else [value]
        if not modes or not all(isinstance(mode, str) for mode in modes):
            raise ValidationError("a matching mode, or a list of them in order of preference")
        unknown = [mode for mode in modes if mode not in MATCHING_MODES]
        if unknown:
            raise ValidationError(f"unknown matching mode {unknown[0]!r}; one of {', '.join(MATCHING_MODES)}")
        if len(set(modes)) != len(modes):
            raise ValidationError("a matching mode is listed twice")
        return tuple(modes)


class SecretRef(fields.String):
    """A secret is always a reference to a setting, never the secret itself."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not envrefs.is_ref(text):
            raise ValidationError("secrets must be written as ${NAME} references to a setting, never inline")
        return text


def _transform_steps(raw: Any) -> tuple[tuple[str, Any], ...]:
    steps = raw if isinstance(raw, list) else [raw]
    parsed: list[tuple[str, Any]] = []
    problems: dict[int | str, list[str]] = {}
    for index, step in enumerate(steps):
        if isinstance(step, str):
            name, arg = step, None
        elif isinstance(step, dict) and len(step) == 1:
            name, arg = next(iter(step.items()))
        else:
            problems[index] = ["a transform is a name or a one-key mapping {name: argument}"]
            continue
        problem = check_transform_arg(str(name), arg)
        if problem:
            problems[index] = [problem]
        parsed.append((str(name), arg))
    if problems:
        raise ValidationError(problems if isinstance(raw, list) else next(iter(problems.values())))
    return tuple(parsed)


class ValueField(fields.Field[Any]):
    """A value spec: an expression string, or {path|value|template, transform, default}."""

    _KEYS = {"path", "value", "template", "transform", "default"}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> ValueSpec:
        if isinstance(value, str):
            problem = expression_problem(value)
            if problem:
                raise ValidationError(problem)
            return ValueSpec(path=value)
        if not isinstance(value, dict):
            if isinstance(value, (int, float, bool)):
                return ValueSpec(value=value)
            raise ValidationError("a value is an expression or a mapping with path, value or template")
        errors: dict[str, Any] = {}
        unknown = set(map(str, value)) - self._KEYS
        for key in sorted(unknown):
            errors[key] = ["unknown key"]
        sources = [k for k in ("path", "value", "template") if k in value]
        if len(sources) != 1:
            errors["path"] = ["give exactly one of path, value or template"]
        path = value.get("path")
        if path is not None:
            problem = expression_problem(str(path))
            if problem:
                errors["path"] = [problem]
        template = value.get("template")
        if template is not None:
            problem = _template_problem(str(template))
            if problem:
                errors["template"] = [problem]
        transforms: tuple[tuple[str, Any], ...] = ()
        if "transform" in value:
            try:
                transforms = _transform_steps(value["transform"])
            except ValidationError as exc:
                errors["transform"] = exc.messages
        if errors:
            raise ValidationError(errors)
        return ValueSpec(
            path=None if path is None else str(path),
            value=value.get("value"),
            template=None if template is None else str(template),
            transforms=transforms,
            default=value.get("default"),
        )


def _template_problem(template: str) -> str | None:
    from relay.mapping.templates import template_expressions

    try:
        expressions = template_expressions(template)
    except ValueError as exc:
        return str(exc)
    for expression in expressions:
        problem = expression_problem(expression)
        if problem:
            return problem
    return None


class TagField(ValueField):
    """A tag: plain text is a template (`form_{formid}`), a mapping is a value spec."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> ValueSpec:
        if isinstance(value, str):
            problem = _template_problem(value)
            if problem:
                raise ValidationError(problem)
            return ValueSpec(template=value)
        return super()._deserialize(value, attr, data, **kwargs)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class FieldSpecSchema(StrictSchema):
    """A field written by an operator: {op: incr, value: ...}."""

    op = fields.String(required=True, validate=validate.OneOf(OPERATORS))
    value = ValueField(load_default=None)
    submatch = fields.String(load_default=None)

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if data["op"] == "upsert" and not data.get("submatch"):
            raise ValidationError("upsert needs submatch", "submatch")
        if data["op"] != "unset" and data.get("value") is None:
            raise ValidationError(f"{data['op']} needs a value", "value")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> FieldSpec:
        return FieldSpec(
            value=data["value"] or ValueSpec(value=None),
            op=data["op"],
            submatch=data["submatch"],
        )


class FieldEntry(fields.Field[Any]):
    """A profile field: a plain value spec (op `set`) or a FieldSpecSchema mapping."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> FieldSpec:
        if isinstance(value, dict) and "op" in value:
            return FieldSpecSchema().load(value)  # type: ignore[no-any-return]
        return FieldSpec(value=ValueField()._deserialize(value, attr, data))


class SubscriptionSchema(StrictSchema):
    channel = fields.String(required=True, validate=validate.OneOf(CHANNELS))
    resource_id = EnvOr(int, required=True)
    email = ValueField()
    phone = ValueField()
    provider = ValueField()
    subscription_id = ValueField()
    cc_data = fields.Dict(keys=fields.String(validate=validate.OneOf(["id", "phone"])), values=ValueField())
    status = ValueField(load_default=None)
    priority = ValueField(load_default=None)
    custom_fields = fields.Dict(keys=fields.String(), values=ValueField(), load_default=dict)
    cats = ValueField(load_default=None)
    when = Expression(load_default=None)

    @validates_schema
    def _identity(self, data: dict[str, Any], **_: Any) -> None:
        channel = data.get("channel")
        if channel not in CHANNEL_IDENTITY:
            return
        for key in CHANNEL_IDENTITY[channel]:
            head, _dot, sub = key.partition(".")
            present = data.get("cc_data", {}).get(sub) if sub else data.get(head)
            if present is None:
                raise ValidationError(f"a {channel} subscription needs {key}", head)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> SubscriptionSpec:
        identity: dict[str, ValueSpec] = {}
        for key in CHANNEL_IDENTITY[data["channel"]]:
            head, _dot, sub = key.partition(".")
            identity[key] = data["cc_data"][sub] if sub else data[head]
        return SubscriptionSpec(
            channel=data["channel"],
            resource_id=data["resource_id"],
            identity=identity,
            status=data["status"],
            priority=data["priority"],
            custom_fields=data["custom_fields"],
            cats=data["cats"],
            when=data["when"],
        )


class TagsSchema(StrictSchema):
    field = EnvOr(str, load_default=envrefs.implied("${RELAY_TAGS_FIELD:-tags}"))
    add = fields.List(TagField(), load_default=list)
    remove = fields.List(TagField(), load_default=list)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> TagsSpec:
        return TagsSpec(field=data["field"], add=tuple(data["add"]), remove=tuple(data["remove"]))


def _given(values: dict[str, ValueSpec | None]) -> dict[str, ValueSpec]:
    """The values a section gives, of those its schema declares (the rest load as None)."""
    return {key: spec for key, spec in values.items() if spec is not None}


class LinesSchema(StrictSchema):
    path = Expression(required=True)
    external_id = ValueField(required=True)
    product = ValueField(required=True)
    count = ValueField(required=True)
    base_price_per_item = ValueField(load_default=None)
    min_price_per_item = ValueField(load_default=None)
    final_price_per_item = ValueField(load_default=None)
    status = ValueField(load_default=None)
    # Keys added to each item, read from the whole payload: a line's price in minor units needs the
    # order's currency (`with: {currency: data.currency_code}`).
    with_ = fields.Dict(
        data_key="with",
        keys=fields.String(validate=validate.Regexp(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z", error="a key's name")),
        values=Expression(),
        load_default=dict,
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> LinesSpec:
        path, shared = data.pop("path"), data.pop("with_")
        return LinesSpec(path=path, values=_given(data), shared=shared)


class OrderSchema(StrictSchema):
    """market/orders/import's order: what altcraft-sources.md gives, times left out (the upstream's own)."""

    external_id = ValueField(required=True)
    endpoint = ValueField(required=True)
    status = ValueField(required=True)
    total_price = ValueField(required=True)
    currency = ValueField(required=True)
    delivery_cost = ValueField(load_default=None)
    region = ValueField(load_default=None)
    tags = ValueField(load_default=None)
    lines = fields.Nested(LinesSchema, required=True)
    when = Expression(load_default=None)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> OrderSpec:
        lines, when = data.pop("lines"), data.pop("when")
        return OrderSpec(values=_given(data), lines=lines, when=when)


class RuleSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Regexp(r"^[a-z0-9_]+$"))
    events = fields.List(fields.String(), load_default=list)
    when = Expression(load_default=None)
    ignore = fields.String(load_default=None)
    keep = fields.String(load_default=None)
    forget = fields.Dict(
        keys=fields.String(validate=validate.OneOf(("email", "phone"))), values=ValueField(), load_default=None
    )
    method = fields.String(load_default="profiles/import", validate=validate.OneOf(PROFILE_METHODS))
    matching = MatchingModes(load_default=("email",))
    match = fields.Dict(
        keys=fields.String(validate=validate.OneOf(MATCHING_KEYS)), values=ValueField(), load_default=dict
    )
    db_id = EnvOr(int, load_default=envrefs.implied("${RELAY_DB_ID:-1}"))
    resource_id = EnvOr(int, load_default=None)
    skip_triggers = fields.Boolean(load_default=False)
    skip_invalid_subscriptions = fields.Boolean(load_default=True)
    detect_geo = fields.Boolean(load_default=True)
    new_profile = fields.Boolean(load_default=False)
    fields_ = fields.Dict(data_key="fields", keys=fields.String(), values=FieldEntry(), load_default=dict)
    full_name = ValueField(load_default=None)
    tags = fields.Nested(TagsSchema, load_default=None)
    subscriptions = fields.List(fields.Nested(SubscriptionSchema), load_default=list)
    add_to_segments = fields.List(EnvOr(int), load_default=list)
    remove_from_segments = fields.List(EnvOr(int), load_default=list)
    order = fields.Nested(OrderSchema, load_default=None)
    once = TagField(load_default=None)

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        unsent_keys = [key for key in ("ignore", "keep", "forget") if data.get(key) is not None]
        if len(unsent_keys) > 1:
            raise ValidationError(f"a rule has one of ignore, keep and forget, not {' and '.join(unsent_keys)}", "keep")
        if data.get("forget") is not None and not data["forget"]:
            raise ValidationError("forget names the person's email, phone or both", "forget")
        for unsent in ("ignore", "keep", "forget"):
            if data.get(unsent) is not None:
                if data.get("once") is not None:
                    raise ValidationError(f"once is for a rule that forwards, not one with {unsent}", "once")
                return
        match = data.get("match", {})
        for mode in data.get("matching", ("email",)):
            required, one_of = MATCHING_MODES[mode]
            missing = [key for key in required if key not in match]
            if missing:
                raise ValidationError(f"matching {mode!r} needs match keys: {', '.join(missing)}", "match")
            if one_of and not any(key in match for key in one_of):
                raise ValidationError(f"matching {mode!r} needs match key {' or '.join(one_of)}", "match")
            if mode == "profile_id" and data.get("method") == "profiles/import":
                raise ValidationError("matching profile_id works only with profiles/update", "method")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Rule:
        return Rule(
            name=data["name"],
            events=tuple(data["events"]),
            when=data["when"],
            ignore=data["ignore"],
            keep=data["keep"],
            forget=data["forget"],
            method=data["method"],
            matching=data["matching"],
            match=data["match"],
            db_id=data["db_id"],
            resource_id=data["resource_id"],
            skip_triggers=data["skip_triggers"],
            skip_invalid_subscriptions=data["skip_invalid_subscriptions"],
            detect_geo=data["detect_geo"],
            new_profile=data["new_profile"],
            fields=data["fields_"],
            full_name=data["full_name"],
            tags=data["tags"],
            subscriptions=tuple(data["subscriptions"]),
            add_to_segments=tuple(data["add_to_segments"]),
            remove_from_segments=tuple(data["remove_from_segments"]),
            order=data["order"],
            once=data["once"],
        )


class RsaSignatureSchema(StrictSchema):
    header = fields.String(required=True, validate=validate.Regexp(HEADER_NAME_PATTERN, error="not a header name"))
    key_path_header = fields.String(
        required=True, validate=validate.Regexp(HEADER_NAME_PATTERN, error="not a header name")
    )


class AuthSchema(StrictSchema):
    scheme = fields.String(required=True, validate=validate.OneOf(["hmac", "token", "rsa", "none"]))
    # rsa (Adobe I/O Events): signatures of the body by the provider's published keys, fetched from keys_url
    rsa_signatures = fields.List(fields.Nested(RsaSignatureSchema), load_default=list)
    keys_url = fields.String(load_default=None, validate=validate.Length(max=500))
    recipient_field = fields.String(load_default=None, validate=TOP_LEVEL_FIELD)
    secret = SecretRef()
    secrets = fields.List(SecretRef())
    header = fields.String()
    algorithm = fields.String(load_default="sha256", validate=validate.OneOf(["sha1", "sha256", "sha512"]))
    encoding = fields.String(load_default="base64", validate=validate.OneOf(["base64", "hex"]))
    prefix = fields.String(load_default="")
    signed = fields.String(load_default="{body}")
    # plain: the header is the signature; fields: `t=..,v1=..` (Stripe) or `ts=..;h1=..` (Paddle)
    signature_format = fields.String(load_default="plain", validate=validate.OneOf(["plain", "fields"]))
    field_separator = fields.String(load_default=",", validate=validate.Length(equal=1))
    timestamp_field = fields.String(load_default="t")
    signature_field = fields.String(load_default="v1")
    timestamp_header = fields.String(load_default=None)
    timestamp_body_field = fields.String(load_default=None, validate=TOP_LEVEL_FIELD)
    timestamp_unit = fields.String(load_default="s", validate=validate.OneOf(["s", "ms"]))
    tolerance = fields.Integer(load_default=None, validate=validate.Range(min=1))
    key_encoding = fields.String(load_default=None, validate=validate.OneOf(["text", "hex", "base64"]))
    hex_key = fields.Boolean(load_default=False)  # the first spelling of key_encoding: hex
    url_unescape = fields.String(
        load_default="",
        validate=validate.Regexp(r"\A[!-/:-@\[-`{-~]*\Z", error="url_unescape lists ASCII punctuation, such as :/?@"),
    )
    # The top-level field of a JSON or form body that carries a token source's token (Wufoo's HandshakeKey).
    body_field = fields.String(load_default=None, validate=validate.Length(min=1, max=200))

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        scheme = data.get("scheme")
        if scheme in ("hmac", "token", "rsa") and not (data.get("secret") or data.get("secrets")):
            raise ValidationError(f"{scheme} needs secret: ${{NAME}} (or secrets: [...])", "secret")
        if scheme == "hmac" and not data.get("header"):
            raise ValidationError("hmac needs the header that carries the signature", "header")
        if scheme == "rsa":
            self._check_rsa(data)
        elif data.get("rsa_signatures") or data.get("keys_url") or data.get("recipient_field"):
            raise ValidationError("rsa_signatures, keys_url and recipient_field go with scheme: rsa", "scheme")
        if data.get("body_field") and scheme != "token":
            raise ValidationError("body_field names a token source's token; use it with scheme: token", "body_field")
        signed = data.get("signed", "{body}")
        if "{body}" not in signed and not self._signs_fields_only(data, signed):
            raise ValidationError(
                "signed must contain {body}; a provider that signs fields of its body instead (Ecwid) signs "
                "{timestamp} from timestamp_body_field and a {field:<name>}, within a tolerance",
                "signed",
            )
        unknown = [piece for piece in re.findall(r"\{[^{}]*\}", signed) if SIGNED_PLACEHOLDER.fullmatch(piece) is None]
        if unknown:
            raise ValidationError(
                f"signed has {', '.join(unknown)}; it takes {{body}}, {{timestamp}}, {{method}}, {{url}}, "
                "{header:<name>} and {field:<name>}",
                "signed",
            )
        if data.get("hex_key") and data.get("key_encoding") not in (None, "hex"):
            raise ValidationError("hex_key: true says key_encoding: hex; give one of them", "hex_key")
        if (
            "{timestamp}" in signed
            and data.get("signature_format") != "fields"
            and not (data.get("timestamp_header") or data.get("timestamp_body_field"))
        ):
            raise ValidationError(
                "a signed {timestamp} needs timestamp_header or timestamp_body_field", "timestamp_header"
            )
        if data.get("timestamp_header") and data.get("timestamp_body_field"):
            raise ValidationError("give timestamp_header or timestamp_body_field, not both", "timestamp_body_field")

    @staticmethod
    def _check_rsa(data: dict[str, Any]) -> None:
        """The keys come only from the address the file gives (https, or a setting), and the body must name
        the recipient: the provider signs every customer's events, so a signature alone would let anyone
        with a registration of their own send events here."""
        if not data.get("rsa_signatures"):
            raise ValidationError("rsa needs rsa_signatures: [{header: ..., key_path_header: ...}]", "rsa_signatures")
        keys_url = data.get("keys_url") or ""
        if not (keys_url.startswith("https://") or envrefs.is_ref(keys_url)):
            raise ValidationError("the address the keys are fetched from: https://... or a ${NAME} setting", "keys_url")
        if not data.get("recipient_field"):
            raise ValidationError(
                "rsa needs recipient_field, the body's field that must equal the secret", "recipient_field"
            )

    @staticmethod
    def _signs_fields_only(data: dict[str, Any], signed: str) -> bool:
        """The body is not signed, only fields of it: a request with another body under a genuine signature
        passes, so the signature must bind a time (refused once outside the tolerance) and a field that
        names the event, which the source de-duplicates by within that time."""
        return (
            "{timestamp}" in signed
            and "{field:" in signed
            and bool(data.get("timestamp_body_field"))
            and data.get("tolerance") is not None
        )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> AuthSpec:
        secrets = list(data.get("secrets") or [])
        if data.get("secret"):
            secrets.insert(0, data["secret"])
        return AuthSpec(
            scheme=data["scheme"],
            secrets=tuple(secrets),
            header=data.get("header"),
            algorithm=data["algorithm"],
            encoding=data["encoding"],
            prefix=data["prefix"],
            signed=data["signed"],
            signature_format=data["signature_format"],
            field_separator=data["field_separator"],
            timestamp_field=data["timestamp_field"],
            signature_field=data["signature_field"],
            timestamp_header=data["timestamp_header"],
            timestamp_body_field=data["timestamp_body_field"],
            timestamp_unit=data["timestamp_unit"],
            tolerance=data["tolerance"],
            key_encoding=data["key_encoding"] or ("hex" if data["hex_key"] else "text"),
            rsa_signatures=tuple((item["header"], item["key_path_header"]) for item in data["rsa_signatures"]),
            keys_url=data["keys_url"],
            recipient_field=data["recipient_field"],
            url_unescape=data["url_unescape"],
            body_field=data["body_field"],
        )


class PingSchema(StrictSchema):
    header = fields.String(load_default=None)
    equals = fields.String(load_default=None)
    absent_headers = fields.List(fields.String(), load_default=list)
    when = Expression(load_default=None)
    body = fields.String(load_default=None)
    body_pattern = fields.String(load_default=None)
    # Checked before authentication: for providers whose test request is unsigned.
    unsigned = fields.Boolean(load_default=False)

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if not any(data.get(k) for k in ("header", "when", "body", "body_pattern")):
            raise ValidationError("a ping needs header, when, body or body_pattern")
        if data.get("unsigned") and not (data.get("body") or data.get("body_pattern")):
            raise ValidationError("an unsigned ping must pin the whole body (body or body_pattern)", "unsigned")
        if data.get("body_pattern"):
            try:
                re.compile(data["body_pattern"])
            except re.error as exc:
                raise ValidationError(f"invalid pattern: {exc}", "body_pattern") from None

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> PingSpec:
        return PingSpec(
            header=data["header"],
            equals=data["equals"],
            absent_headers=tuple(data["absent_headers"]),
            when=data["when"],
            body=data["body"],
            body_pattern=data["body_pattern"],
            unsigned=data["unsigned"],
        )


class DedupSchema(StrictSchema):
    headers = fields.List(fields.String(), load_default=list)
    paths = fields.List(Expression(), load_default=list)


class IpSchema(StrictSchema):
    paths = fields.List(Expression(), load_default=list)
    client = fields.Boolean(load_default=False)


class CorsSchema(StrictSchema):
    """The web pages whose scripts may post to the hook from a visitor's browser."""

    origins = fields.List(
        fields.String(
            validate=validate.Regexp(
                r"\A(\*|https?://[^/\s?#*]+)\Z",
                error="an origin is scheme://host[:port] with no path (https://www.example.com), or *",
            )
        ),
        required=True,
        validate=validate.Length(min=1),
    )


class Template(CheckedText):
    """A text with `{expression}` placeholders and `${NAME}` settings."""

    def problem(self, text: str) -> str | None:
        return _template_problem(text)


SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")  # an environment variable's name, as ${NAME} takes it
FETCH_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}\Z")  # read by the rules as `fetched.<name>`: a plain JMESPath name
# A header whose name says it carries a credential must take its value from a setting, never the file.
CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|password|cookie|signature", re.IGNORECASE)


class FetchSchema(StrictSchema):
    url = Template(required=True, validate=validate.Length(max=2000))
    headers = fields.Dict(
        keys=fields.String(validate=validate.Regexp(HEADER_NAME, error="not a header name")),
        values=Template(validate=validate.Length(max=2000)),
        load_default=dict,
    )
    events = fields.List(fields.String(), load_default=list)
    when = Expression(load_default=None)
    optional = fields.Boolean(load_default=False)
    needs = fields.List(
        fields.String(validate=validate.Regexp(SETTING_NAME, error="a setting's name, such as RELAY_MARKET_ENDPOINT")),
        load_default=list,
    )
    # Read by the rule's order section alone: its failure holds back the order, not the profile calls.
    order_only = fields.Boolean(load_default=False)
    # Answers that say the record is gone (a cart converted or deleted since the webhook): no document.
    absent_on = fields.List(
        fields.Integer(validate=validate.OneOf([404, 410], error="404 or 410, the answers that say a record is gone")),
        load_default=list,
    )

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("needs") and not data.get("optional"):
            raise ValidationError("a fetch that needs settings is optional: give optional: true", "needs")
        if data.get("absent_on") and data.get("order_only"):
            raise ValidationError(
                "an order's lines cannot be absent: absent_on is for what the rules read", "absent_on"
            )
        url = data.get("url", "")
        if not url.lower().startswith(("https://", "http://", "${")):
            raise ValidationError("the API's address: https://... or a ${NAME} setting that holds it", "url")
        if "{" in url.split("://", 1)[-1].split("/", 1)[0].replace("${", ""):
            raise ValidationError("the host comes from the file or a setting, never from the payload", "url")
        for name, value in data.get("headers", {}).items():
            if CREDENTIAL_HEADER.search(name) and "${" not in value:
                raise ValidationError(
                    f"{name} carries a credential: write it as a ${{NAME}} reference to a setting, never inline",
                    "headers",
                )
            if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                raise ValidationError(f"{name} is set by relay's HTTP client", "headers")


class DelaySchema(StrictSchema):
    """Events whose deliveries the worker takes a while after they arrive (relay.mapping.delays)."""

    events = fields.List(fields.String(validate=validate.Length(min=1)), required=True, validate=validate.Length(min=1))
    seconds = EnvOr(int, required=True)
    latest_by = Expression(load_default=None)
    ordered_by = Expression(load_default=None)

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("ordered_by") and not data.get("latest_by"):
            raise ValidationError("orders the deliveries of one latest_by key: name latest_by too", "ordered_by")
        seconds = data.get("seconds")
        span = f"whole seconds from 1 to {MAX_DELAY_SECONDS} (a day)"
        if isinstance(seconds, int) and not 1 <= seconds <= MAX_DELAY_SECONDS:
            raise ValidationError(span, "seconds")
        if isinstance(seconds, str):
            ref = envrefs.parse_ref(seconds)
            if ref is None or ref.default is None:
                raise ValidationError(
                    "a setting's reference with a default, ${NAME:-600}: relay must know how long to wait "
                    "while the setting is unset",
                    "seconds",
                )
            if not 0 <= int(ref.default) <= MAX_DELAY_SECONDS:
                raise ValidationError(f"the default of {seconds} must be {span}, or 0 for no wait", "seconds")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> DelaySpec:
        return DelaySpec(
            events=tuple(data["events"]),
            seconds=data["seconds"],
            latest_by=data["latest_by"],
            ordered_by=data["ordered_by"],
        )


class ChallengeSchema(StrictSchema):
    query = fields.String(required=True, validate=_query_parameter("a challenge"))


class EventSchema(StrictSchema):
    header = fields.String(load_default=None)
    path = Expression(load_default=None)
    # A parameter of the hook's URL (`?topic=orders/create`), for a provider that names no event in its
    # request but lets its owner give each event an address of its own (InSales).
    query = fields.String(load_default=None, validate=_query_parameter("an event"))

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if sum(bool(data.get(key)) for key in ("header", "path", "query")) != 1:
            raise ValidationError("event is taken from exactly one of header, path or query")


_PAYLOAD_TYPES = {
    "string": fields.String,
    "integer": fields.Integer,
    "number": fields.Float,
    "boolean": fields.Boolean,
    "object": fields.Dict,
    "list": fields.List,
    "any": fields.Raw,
}


class PayloadFieldSchema(StrictSchema):
    type = fields.String(required=True, validate=validate.OneOf(list(_PAYLOAD_TYPES)))
    required = fields.Boolean(load_default=False)


class PayloadSchemaSchema(StrictSchema):
    """The shape the incoming payload must have, as a marshmallow schema of its own."""

    fields_ = fields.Dict(
        data_key="fields", keys=fields.String(), values=fields.Nested(PayloadFieldSchema), required=True
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> Schema:
        declared: dict[str, fields.Field[Any]] = {}
        for name, spec in data["fields_"].items():
            kind = _PAYLOAD_TYPES[spec["type"]]
            field: fields.Field[Any] = (
                kind(fields.Raw(), required=spec["required"], allow_none=not spec["required"])
                if kind is fields.List
                else kind(required=spec["required"], allow_none=not spec["required"])
            )
            declared[name] = field
        schema_class = Schema.from_dict(declared, name="PayloadSchema")
        from marshmallow import INCLUDE

        return schema_class(unknown=INCLUDE)


class MappingFileSchema(StrictSchema):
    version = fields.Integer(required=True, validate=validate.Equal(1, error="only version 1 exists"))
    source = fields.String(
        required=True,
        validate=validate.Regexp(SOURCE_NAME, error="lower-case letters, digits and _, at most 64"),
    )
    description = fields.String(load_default="")
    kind = fields.String(load_default="form", validate=validate.OneOf(["form", "shop", "other"]))
    auth = fields.Nested(AuthSchema, required=True)
    pings = fields.List(fields.Nested(PingSchema), load_default=list)
    dedup = fields.Nested(DedupSchema, load_default=dict)
    ip = fields.Nested(IpSchema, load_default=dict)
    event = fields.Nested(EventSchema, load_default=None)
    decode_json = fields.List(fields.String(), load_default=list)
    # The status of an accepted webhook's answer: 202, or 200 for the providers that take nothing else as
    # success (Elementor shows the visitor an error, Webflow retries and may deactivate the webhook).
    accepted_status = fields.Integer(load_default=202, validate=validate.OneOf([200, 202]))
    cors = fields.Nested(CorsSchema, load_default=None)
    challenge = fields.Nested(ChallengeSchema, load_default=None)
    payload = fields.Nested(PayloadSchemaSchema, load_default=None)
    # Documents fetched from the provider's API before translating, in the order written (each fetch's
    # templates see the documents of those before it).
    fetch = fields.Dict(
        keys=fields.String(validate=validate.Regexp(FETCH_NAME, error="lower-case letters, digits and _")),
        values=fields.Nested(FetchSchema),
        load_default=dict,
        validate=validate.Length(max=8),
    )
    # Events whose deliveries wait before the worker takes them, each event in one entry at most.
    delay = fields.List(fields.Nested(DelaySchema), load_default=list, validate=validate.Length(max=16))
    rules = fields.List(fields.Nested(RuleSchema), required=True, validate=validate.Length(min=1))

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        names = [rule.name for rule in data.get("rules", [])]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValidationError(f"rule names must be unique: {', '.join(duplicated)}", "rules")
        if data.get("event") is None and any(rule.events for rule in data.get("rules", [])):
            raise ValidationError(
                "rules with `events` need an event: {header: ...}, {path: ...} or {query: ...}", "event"
            )
        auth = data.get("auth")
        if isinstance(auth, AuthSpec) and auth.scheme == "hmac" and "{body}" not in auth.signed:
            signed_fields = set(re.findall(r"\{field:([A-Za-z0-9_]+)\}", auth.signed))
            if not signed_fields & set(data.get("dedup", {}).get("paths", ())):
                raise ValidationError(
                    "the signature covers fields, not the body: de-duplicate by a signed field "
                    f"(dedup: {{paths: [{sorted(signed_fields)[0]}]}}), so that a genuine signature is taken once",
                    "dedup",
                )
        order_only = sorted(name for name, spec in data.get("fetch", {}).items() if spec.get("order_only"))
        if order_only and not any(rule.order is not None for rule in data.get("rules", [])):
            raise ValidationError(
                f"fetch {order_only[0]} is order_only, and no rule has an order section to read it", "fetch"
            )
        if data.get("event") is None and any(spec.get("events") for spec in data.get("fetch", {}).values()):
            raise ValidationError(
                "a fetch with `events` needs an event: {header: ...}, {path: ...} or {query: ...}", "event"
            )
        delayed = [event for spec in data.get("delay", []) for event in spec.events]
        if delayed and data.get("event") is None:
            raise ValidationError(
                "a delay names events: it needs an event: {header: ...}, {path: ...} or {query: ...}", "event"
            )
        twice = sorted({event for event in delayed if delayed.count(event) > 1})
        if twice:
            raise ValidationError(f"{twice[0]} is delayed twice: name each event in one entry", "delay")

    @staticmethod
    def fetch_specs(raw: dict[str, dict[str, Any]]) -> tuple[FetchSpec, ...]:
        return tuple(
            FetchSpec(
                name=name,
                url=spec["url"],
                headers=tuple(spec["headers"].items()),
                events=tuple(spec["events"]),
                when=spec["when"],
                optional=spec["optional"],
                needs=tuple(spec["needs"]),
                order_only=spec["order_only"],
                absent_on=tuple(spec["absent_on"]),
            )
            for name, spec in raw.items()
        )
