"""HTTP request -> request message (path, query, body) and response message -> JSON.

Strict by default: unknown body fields, unknown or duplicated query parameters, a body
where the binding takes none and malformed JSON are 400s with field violations.
"""

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf import descriptor, json_format, message

from gateway.errors import HttpError, bad_request
from gateway.routes import FIELD_MASK, Route

WKT_PREFIX = "google.protobuf."
# Well-known types whose JSON form is a single string or scalar, so a query value can set them.
SCALAR_WKT = frozenset(
    WKT_PREFIX + name
    for name in (
        "Timestamp",
        "Duration",
        "FieldMask",
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
BOOL_WKT = WKT_PREFIX + "BoolValue"
_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field: ")
_AT_PATH = re.compile(r" at [\w.\[\]]+\.*$")

Violations = list[tuple[str, str]]


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit``; iterative, so any depth is safe."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json(body: bytes, max_depth: int) -> Any:
    """The JSON value of ``body``; 400 when malformed, duplicated or nested too deep."""
    try:
        value = json.loads(body, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except _DuplicateKey as error:
        raise bad_request("Malformed JSON body.", [("", str(error))], "MALFORMED_JSON") from None
    except json.JSONDecodeError as error:
        where = f"{error.msg} at line {error.lineno} column {error.colno}"
        raise bad_request("Malformed JSON body.", [("", where)], "MALFORMED_JSON") from None
    except UnicodeDecodeError:
        raise bad_request(
            "Malformed JSON body.", [("", "the body is not UTF-8")], "MALFORMED_JSON"
        ) from None
    if isinstance(value, dict | list) and _depth_exceeds(value, max_depth):
        raise _too_deep(max_depth)
    return value


def _too_deep(max_depth: int) -> HttpError:
    return bad_request(
        "JSON body nested too deeply.",
        [("", f"arrays and objects may nest at most {max_depth} levels")],
        "JSON_TOO_DEEP",
    )


@lru_cache(maxsize=4096)
def _field_map(desc: descriptor.Descriptor) -> dict[str, descriptor.FieldDescriptor]:
    """Fields by proto name and by JSON name (both are valid proto3 JSON input)."""
    fields: dict[str, descriptor.FieldDescriptor] = {}
    for fd in desc.fields:
        fields[fd.json_name] = fd
        fields[fd.name] = fd
    return fields


def _snake_mask_to_json(mask: str) -> str:
    """FieldMask paths as proto JSON wants them (lowerCamel); clients may send snake_case."""

    def camel(path: str) -> str:
        head, *rest = path.split("_")
        return head + "".join(p[:1].upper() + p[1:] for p in rest)

    return ",".join(".".join(camel(p) for p in path.split(".")) for path in mask.split(","))


_FD = descriptor.FieldDescriptor
_INT32 = frozenset(
    {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32, _FD.TYPE_UINT32, _FD.TYPE_FIXED32}
)
_INT64 = frozenset(
    {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64}
)
_FLOATS = frozenset({_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE})
_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})
_STRING_WKT = frozenset(
    WKT_PREFIX + n for n in ("Timestamp", "Duration", "FieldMask", "StringValue", "BytesValue")
)
_NULLABLE = frozenset({WKT_PREFIX + "Value", WKT_PREFIX + "NullValue"})


def _scalar_problem(value: Any, fd: descriptor.FieldDescriptor) -> str | None:
    """Why ``value`` is not the JSON type the schema documents for ``fd``.

    proto3 JSON parsers also take numbers as strings and enums as numbers; the gateway
    holds clients to the documented types so that its OpenAPI schema tells the truth.
    """
    if fd.enum_type is not None:
        if fd.enum_type.full_name in _NULLABLE:
            return None
        # The parser would also take "0" for value number 0; only names are documented.
        if isinstance(value, str) and value in fd.enum_type.values_by_name:
            return None
        return "expected one of " + ", ".join(fd.enum_type.values_by_name)
    kind = fd.type
    if isinstance(value, bool):
        return None if kind == _FD.TYPE_BOOL else "expected " + _expected(kind)
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind in _INT32:
        ok = integral
    elif kind in _INT64:
        ok = integral or isinstance(value, str)
    elif kind in _FLOATS:
        ok = isinstance(value, int | float) or (isinstance(value, str) and value in _FLOAT_WORDS)
    elif kind == _FD.TYPE_BOOL:
        ok = False
    else:
        ok = isinstance(value, str)
    return None if ok else "expected " + _expected(kind)


def _expected(kind: int) -> str:
    if kind in _INT32:
        return "an integer"
    if kind in _INT64:
        return "an integer or a string of digits"
    if kind in _FLOATS:
        return "a number"
    if kind == _FD.TYPE_BOOL:
        return "true or false"
    return "a string"


def _message_problem(value: Any, message_type: descriptor.Descriptor) -> str | None:
    """Why ``value`` cannot be the JSON form of ``message_type``, for the well-known shapes."""
    name = message_type.full_name
    if name == WKT_PREFIX + "Value":
        return None
    if name in _STRING_WKT:
        return None if isinstance(value, str) else "expected a string"
    if name in SCALAR_WKT:
        return _scalar_problem(value, message_type.fields_by_name["value"])
    if name == WKT_PREFIX + "ListValue":
        return None if isinstance(value, list) else "expected an array"
    return None if isinstance(value, dict) else "expected an object"


def _check_message(obj: Any, desc: descriptor.Descriptor, path: str, out: Violations) -> None:
    """Report unknown fields and wrongly typed values under ``obj``."""
    if desc.full_name.startswith(WKT_PREFIX) or not isinstance(obj, dict):
        return
    fields = _field_map(desc)
    for key, value in obj.items():
        where = f"{path}.{key}" if path else key
        fd = fields.get(key)
        if fd is None:
            out.append((where, f"unknown field {key!r} of {desc.full_name}"))
        elif value is None:
            nullable = fd.message_type or fd.enum_type
            if nullable is None or nullable.full_name not in _NULLABLE or fd.is_repeated:
                out.append((where, "null is not a value here; leave the field out instead"))
        elif fd.message_type is not None and fd.message_type.full_name == FIELD_MASK:
            if isinstance(value, str):
                obj[key] = _snake_mask_to_json(value)
            else:
                out.append((where, "expected a string of comma-separated paths"))
        else:
            _check_field(value, fd, where, out)


def _check_single(value: Any, fd: descriptor.FieldDescriptor, where: str, out: Violations) -> None:
    if value is None and fd.message_type is not None and fd.message_type.full_name in _NULLABLE:
        return
    if value is None:
        out.append((where, "null is not a value here"))
        return
    message_type = fd.message_type
    problem = (
        _scalar_problem(value, fd)
        if message_type is None
        else _message_problem(value, message_type)
    )
    if problem:
        out.append((where, problem))
    elif message_type is not None:
        _check_message(value, message_type, where, out)


def _check_field(value: Any, fd: descriptor.FieldDescriptor, where: str, out: Violations) -> None:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            out.append((where, "expected an object"))
            return
        value_field = fd.message_type.fields_by_name["value"]
        for key, item in value.items():
            _check_single(item, value_field, f"{where}[{key}]", out)
    elif fd.is_repeated:
        if not isinstance(value, list):
            out.append((where, "expected an array"))
            return
        for index, item in enumerate(value):
            _check_single(item, fd, f"{where}[{index}]", out)
    else:
        _check_single(value, fd, where, out)


def _mask_paths(obj: dict[str, Any], desc: descriptor.Descriptor, prefix: str) -> list[str]:
    """Update-mask paths for a PATCH body: leaves of nested messages, proto names."""
    paths: list[str] = []
    fields = _field_map(desc)
    for key, value in obj.items():
        fd = fields.get(key)
        if fd is None:
            continue  # already a violation
        name = prefix + fd.name
        nested = fd.message_type
        if (
            nested is not None
            and not fd.is_repeated
            and not nested.full_name.startswith(WKT_PREFIX)
            and isinstance(value, dict)
            and value
        ):
            paths.extend(_mask_paths(value, nested, name + "."))
        else:
            paths.append(name)
    return paths


def _resolve_query(route: Route, key: str) -> tuple[descriptor.FieldDescriptor, ...] | str:
    """The field chain a query parameter sets, or why it cannot be one."""
    chain = route.query_fields.get(key)
    if chain is not None:
        return chain
    if route.body == "*":
        return "this method takes its fields in the JSON body, not the query"
    found: list[descriptor.FieldDescriptor] = []
    desc: descriptor.Descriptor | None = route.method.input_type
    parts = key.split(".")
    for index, part in enumerate(parts):
        fd = desc.fields_by_name.get(part) if desc is not None else None
        if fd is None:
            return "unknown query parameter"
        found.append(fd)
        last = index == len(parts) - 1
        nested = fd.message_type
        if nested is None or nested.full_name in SCALAR_WKT:
            if not last:
                return "unknown query parameter"
            desc = None
        elif last or fd.is_repeated:
            return "only scalar fields can be set from the query (use dots for nested fields)"
        else:
            desc = nested
    for bound in route.path_fields:
        if key == bound or key.startswith(bound + ".") or bound.startswith(key + "."):
            return "this field is bound by the URL path"
    if route.body_field is not None and parts[0] == route.body_field.name:
        return "this field is taken from the request body"
    result = tuple(found)
    route.query_fields[key] = result
    return result


def _query_scalar(raw: str, fd: descriptor.FieldDescriptor) -> Any:
    """A query string value as proto3 JSON would carry it."""
    is_bool = fd.type == descriptor.FieldDescriptor.TYPE_BOOL or (
        fd.message_type is not None and fd.message_type.full_name == BOOL_WKT
    )
    if is_bool:
        if raw in ("true", "false"):
            return raw == "true"
        raise ValueError("expected true or false")
    if fd.message_type is not None and fd.message_type.full_name == FIELD_MASK:
        return _snake_mask_to_json(raw)
    if fd.enum_type is not None and raw not in fd.enum_type.values_by_name:
        raise ValueError("expected one of " + ", ".join(fd.enum_type.values_by_name))
    return raw


def _set_nested(data: dict[str, Any], names: list[str], value: Any) -> str | None:
    """Put ``value`` at ``names`` in ``data``; a reason when something else is already there."""
    target = data
    for name in names[:-1]:
        child = target.setdefault(name, {})
        if not isinstance(child, dict):
            return "conflicts with another value for the same field"
        target = child
    existing = target.get(names[-1])
    if existing is not None and str(existing) != str(value):
        return "the path and the body give different values"
    target[names[-1]] = value
    return None


def _violation_from_parse_error(error: Exception) -> tuple[str, str]:
    text = str(error)
    field = ".".join(_PARSE_FIELD.findall(text))
    description = _AT_PATH.sub("", _PARSE_FIELD.sub("", text)).rstrip(".") or "invalid value"
    return field, description


def build_request(
    route: Route,
    path_values: dict[str, str],
    query: str,
    body: bytes,
    max_depth: int,
) -> message.Message:
    """The request message of ``route`` from the URL and the JSON body."""
    if not path_values and not query and not body:
        return route.request_class()
    violations: Violations = []
    data: dict[str, Any] = {}
    mask_paths: list[str] | None = None
    if body:
        if not route.body:
            raise bad_request(
                "This method takes no request body.",
                [("", "send the fields as query parameters")],
                "UNEXPECTED_BODY",
            )
        value = parse_json(body, max_depth)
        if route.body_field is None:
            if not isinstance(value, dict):
                raise bad_request("The body must be a JSON object.", [("", "not an object")])
            _check_message(value, route.method.input_type, "", violations)
            data = value
        else:
            fd = route.body_field
            holder = {fd.name: value}
            _check_message(holder, route.method.input_type, "", violations)
            data = holder
            if route.update_mask_field and isinstance(value, dict) and fd.message_type:
                mask_paths = _mask_paths(value, fd.message_type, "")
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise bad_request("Malformed query string.", [("", "not valid UTF-8")]) from None
        grouped: dict[str, list[str]] = {}
        for key, raw in pairs:
            grouped.setdefault(key, []).append(raw)
        for key, raws in grouped.items():
            chain = _resolve_query(route, key)
            if isinstance(chain, str):
                violations.append((key, chain))
                continue
            leaf = chain[-1]
            if not leaf.is_repeated and len(raws) > 1:
                violations.append((key, "given more than once for a singular field"))
                continue
            try:
                values = [_query_scalar(raw, leaf) for raw in raws]
            except ValueError as error:
                violations.append((key, str(error)))
                continue
            conflict = _set_nested(
                data, [fd.name for fd in chain], values if leaf.is_repeated else values[0]
            )
            if conflict:
                violations.append((key, conflict))
    for name, path_value in path_values.items():
        conflict = _set_nested(data, name.split("."), path_value)
        if conflict:
            violations.append((name, conflict))
    if violations:
        raise bad_request("The request has invalid fields.", violations)
    request = route.request_class()
    try:
        json_format.ParseDict(data, request, descriptor_pool=route.pool)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as error:
        raise bad_request(
            "The request has invalid fields.", [_violation_from_parse_error(error)]
        ) from None
    if mask_paths is not None and route.update_mask_field:
        if not request.HasField(route.update_mask_field):
            getattr(request, route.update_mask_field).paths.extend(mask_paths)
    return request


def _to_dict(msg: message.Message, route: Route) -> Any:
    return json_format.MessageToDict(
        msg,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        descriptor_pool=route.pool,
    )


def response_json(route: Route, msg: message.Message) -> Any:
    """The JSON value of a response, narrowed to ``response_body`` when the binding has one."""
    fd = route.response_field
    if fd is None:
        value = _to_dict(msg, route)
    elif fd.message_type is not None and not fd.is_repeated:
        value = _to_dict(getattr(msg, fd.name), route)
    else:
        value = _to_dict(msg, route).get(fd.name)
    return _whole_numbers(value) if route.free_form_json else value


def _whole_numbers(value: Any) -> Any:
    """Integral floats as ints: Struct keeps every number as a double, so ``{"n": 12}``
    would otherwise come back as ``12.0``. Both are the same JSON number."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT_FLOAT else value
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


# Beyond 2**53 a double no longer holds every integer, so its int form would add digits.
_EXACT_FLOAT = 2**53


_dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return _dumps(value).encode()
