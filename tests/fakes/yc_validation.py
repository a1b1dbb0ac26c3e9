"""Request validation as the Yandex Cloud API does it, read from the SDK's own descriptors.

Yandex Cloud's protos annotate fields with ``yandex.cloud.validation`` options (``required``,
``pattern``, ``length``, ``size``, ``value``, ``unique``, ``map_key``, ``bytes``; ``exactly_one``
on oneofs), and the real API refuses a request that breaks one with ``INVALID_ARGUMENT`` naming
the field (e.g. a Data Proc job ``name`` must match ``|[a-z][-a-z0-9]{1,61}[a-z0-9]``). A fake
that accepts what the cloud refuses hides bugs, so :class:`ValidationInterceptor` checks every
unary request of every service the fake serves, generically: recursively into set sub-messages,
repeated fields and maps.

Spec strings, as they occur in the SDK: ``<=N``, ``>=N``, ``<N``, ``>N``, ``A-B``, ``N``, a
comma list of allowed values; numbers may carry duration units (``1m-10m``) or be timestamps
(``19700101T000000.000000000-...``). A proto3 number equal to 0 counts as unset (proto3 cannot
tell them apart) and is not range-checked; strings are always checked (patterns such as
``|[a-z]...`` say explicitly that the empty string is allowed).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterator
from functools import cache

import grpc
from google.protobuf.descriptor import FieldDescriptor
from yandex.cloud import validation_pb2

_EXT = validation_pb2.DESCRIPTOR.extensions_by_name
_RULES = ("required", "pattern", "value", "size", "length", "unique", "map_key", "bytes")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NUMBER_RE = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_TIMESTAMP_RE = re.compile(r"(\d{8}T\d{6})(?:\.(\d+))?")
_NUMERIC_TYPES = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT,
)


# --------------------------------------------------------------------------- spec strings
def _number(text: str) -> float:
    """``10``, ``0.5``, ``10m`` (seconds), ``19700101T000000.000000000`` (epoch seconds)."""
    text = text.strip()
    stamp = _TIMESTAMP_RE.fullmatch(text)
    if stamp:
        seconds = calendar.timegm(time.strptime(stamp.group(1), "%Y%m%dT%H%M%S"))
        return seconds + float("0." + (stamp.group(2) or "0"))
    match = _NUMBER_RE.fullmatch(text)
    if not match:
        raise ValueError(f"unreadable validation bound {text!r}")
    return float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1)


def within(number: float, spec: str) -> bool:
    """Whether ``number`` satisfies a validation spec string."""
    spec = spec.strip()
    if "," in spec:
        return any(number == _number(part) for part in spec.split(","))
    for op, test in (
        ("<=", lambda a, b: a <= b),
        (">=", lambda a, b: a >= b),
        ("<", lambda a, b: a < b),
        (">", lambda a, b: a > b),
    ):
        if spec.startswith(op):
            return test(number, _number(spec[len(op) :]))
    dash = spec.find("-", 1)  # a range "A-B"; A may be negative
    if dash > 0:
        return _number(spec[:dash]) <= number <= _number(spec[dash + 1 :])
    return number == _number(spec)


# --------------------------------------------------------------------------- rules of a field
@cache
def _rules(field: FieldDescriptor) -> dict:
    options = field.GetOptions()
    found = {}
    for name in _RULES:
        ext = _EXT[name]
        if options.HasExtension(ext):
            value = options.Extensions[ext]
            if value or name == "map_key":
                found[name] = value
    return found


def _is_repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # newer protobuf; ``label`` is deprecated there
    return bool(flag) if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE and _is_repeated(field) and field.message_type.GetOptions().map_entry
    )


def _is_unset(value) -> bool:
    return value in ("", b"", 0, False, None)


def _check_scalar(value, field: FieldDescriptor, rules: dict, name: str) -> Iterator[str]:
    """One string / bytes / number / enum value against ``pattern``, ``length``, ``bytes``, ``value``."""
    if isinstance(value, str):
        if "pattern" in rules and not re.fullmatch(rules["pattern"], value):
            yield f"{name}: value {value!r} does not match the pattern {rules['pattern']!r}"
        if "length" in rules and not within(len(value), rules["length"]):
            yield f"{name}: length {len(value)} is out of the allowed range {rules['length']!r}"
    elif isinstance(value, bytes):
        limit = rules.get("bytes") or rules.get("length")
        if limit and not within(len(value), limit):
            yield f"{name}: size {len(value)} bytes is out of the allowed range {limit!r}"
    elif "value" in rules and field.type in _NUMERIC_TYPES and value != 0 and not within(value, rules["value"]):
        yield f"{name}: value {value} is out of the allowed range {rules['value']!r}"


def _message_number(message) -> float | None:
    """The number a well-known message stands for (Duration, Timestamp, wrappers), else None."""
    full = message.DESCRIPTOR.full_name
    if full in ("google.protobuf.Duration", "google.protobuf.Timestamp"):
        return message.seconds + message.nanos / 1e9
    if full.startswith("google.protobuf.") and full.endswith("Value") and "value" in message.DESCRIPTOR.fields_by_name:
        value = message.value
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


def _check_message_value(message, rules: dict, name: str) -> Iterator[str]:
    if "value" in rules:
        number = _message_number(message)
        if number is not None and not within(number, rules["value"]):
            yield f"{name}: value {number:g} is out of the allowed range {rules['value']!r}"
    if not message.DESCRIPTOR.full_name.startswith("google.protobuf."):
        yield from violations(message, name + ".")


# --------------------------------------------------------------------------- walking a message
def _check_map(mapping, field: FieldDescriptor, rules: dict, name: str) -> Iterator[str]:
    if rules.get("required") and not mapping:
        yield f"{name}: at least one entry is required"
    if "size" in rules and not within(len(mapping), rules["size"]):
        yield f"{name}: {len(mapping)} entries is out of the allowed range {rules['size']!r}"
    value_field = field.message_type.fields_by_name["value"]
    key_rules = {}
    if "map_key" in rules:
        spec = rules["map_key"]
        key_rules = {k: getattr(spec, k) for k in ("value", "pattern", "length") if getattr(spec, k)}
    value_rules = {k: v for k, v in rules.items() if k in ("pattern", "length", "value", "bytes")}
    for key in sorted(mapping):
        entry = f"{name}[{key!r}]"
        yield from _check_scalar(key, field.message_type.fields_by_name["key"], key_rules, f"{name} (key)")
        value = mapping[key]
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            yield from _check_message_value(value, value_rules, entry)
        else:
            yield from _check_scalar(value, value_field, value_rules, entry)


def _check_repeated(values, field: FieldDescriptor, rules: dict, name: str) -> Iterator[str]:
    if rules.get("required") and not values:
        yield f"{name}: at least one element is required"
    if "size" in rules and not within(len(values), rules["size"]):
        yield f"{name}: {len(values)} elements is out of the allowed range {rules['size']!r}"
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        if rules.get("unique") and len(set(values)) != len(values):
            yield f"{name}: elements must be unique"
        for index, value in enumerate(values):
            yield from _check_scalar(value, field, rules, f"{name}[{index}]")
        return
    for index, value in enumerate(values):
        yield from _check_message_value(value, rules, f"{name}[{index}]")


def _check_single(message, field: FieldDescriptor, rules: dict, name: str) -> Iterator[str]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if not message.HasField(field.name):
            if rules.get("required"):
                yield f"{name}: required"
            return
        yield from _check_message_value(getattr(message, field.name), rules, name)
        return
    value = getattr(message, field.name)
    if rules.get("required") and _is_unset(value):
        yield f"{name}: required"
        return
    yield from _check_scalar(value, field, rules, name)


def violations(message, prefix: str = "") -> Iterator[str]:
    """Every broken validation option of ``message`` and what it contains, as ``field: why``."""
    descriptor = message.DESCRIPTOR
    for oneof in descriptor.oneofs:
        if oneof.GetOptions().Extensions[_EXT["exactly_one"]] and message.WhichOneof(oneof.name) is None:
            choices = ", ".join(f.name for f in oneof.fields)
            yield f"{prefix}{oneof.name}: exactly one of {choices} is required"
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and message.WhichOneof(oneof.name) != field.name:
            continue  # an unset member of a oneof is not part of the request
        rules = _rules(field)
        name = prefix + field.name
        value = getattr(message, field.name)
        if _is_map(field):
            yield from _check_map(value, field, rules, name)
        elif _is_repeated(field):
            yield from _check_repeated(value, field, rules, name)
        else:
            yield from _check_single(message, field, rules, name)


# --------------------------------------------------------------------------- the interceptor
class ValidationInterceptor(grpc.ServerInterceptor):
    """Refuses a unary request that breaks its validation options with ``INVALID_ARGUMENT``."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def checked(request, context):
            problems = list(violations(request))
            if problems:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Request validation error: " + "; ".join(problems))
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
