"""JSON Schemas of proto messages as the gateway's JSON carries them, per direction.

A message has up to three schemas (AIP-203 field behaviour decides how they differ):

- OUTPUT, what responses carry: every field, OUTPUT_ONLY ones marked ``readOnly``, and
  ``required`` listing the fields the gateway always writes (those without presence).
- INPUT, what request bodies may carry: no OUTPUT_ONLY field, ``required`` listing the
  REQUIRED ones.
- PATCH, a partial update (a body with an update mask): INPUT without ``required``.

The OUTPUT schema takes the message's name; the others get a suffix where they exist
alongside it (see ``settle_names``).
"""

import copy
import enum
from collections.abc import Iterable
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor

FD = descriptor.FieldDescriptor
REF = "#/components/schemas/"
ERROR_SCHEMA = "google.rpc.Status.AIP193"
INT32_RANGE = {"minimum": -(2**31), "maximum": 2**31 - 1}
UINT32_RANGE = {"minimum": 0, "maximum": 2**32 - 1}
FLOAT_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]
}

# proto3 JSON writes 64-bit integers as strings so JavaScript does not round them; a
# client may send either form.
INT64_SCHEMA: dict[str, Any] = {
    "description": "A 64-bit integer: always written as a string, read as a string or number.",
    "anyOf": [
        {"type": "string", "pattern": "^-?[0-9]{1,19}$"},
        {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    ],
}
UINT64_SCHEMA: dict[str, Any] = {
    "description": "An unsigned 64-bit integer: written as a string, read as a string or number.",
    "anyOf": [
        {"type": "string", "pattern": "^[0-9]{1,20}$"},
        {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
    ],
}

_SCALARS: dict[int, dict[str, Any]] = {
    FD.TYPE_DOUBLE: FLOAT_SCHEMA,
    FD.TYPE_FLOAT: FLOAT_SCHEMA,
    FD.TYPE_INT32: {"type": "integer", "format": "int32", **INT32_RANGE},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32", **INT32_RANGE},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32", **INT32_RANGE},
    FD.TYPE_UINT32: {"type": "integer", "format": "int64", **UINT32_RANGE},
    FD.TYPE_FIXED32: {"type": "integer", "format": "int64", **UINT32_RANGE},
    FD.TYPE_INT64: INT64_SCHEMA,
    FD.TYPE_SINT64: INT64_SCHEMA,
    FD.TYPE_SFIXED64: INT64_SCHEMA,
    FD.TYPE_UINT64: UINT64_SCHEMA,
    FD.TYPE_FIXED64: UINT64_SCHEMA,
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}

_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated field paths."},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": FLOAT_SCHEMA,
    "google.protobuf.FloatValue": FLOAT_SCHEMA,
    "google.protobuf.Int64Value": _SCALARS[FD.TYPE_INT64],
    "google.protobuf.UInt64Value": _SCALARS[FD.TYPE_UINT64],
    "google.protobuf.Int32Value": _SCALARS[FD.TYPE_INT32],
    "google.protobuf.UInt32Value": _SCALARS[FD.TYPE_UINT32],
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": _SCALARS[FD.TYPE_BYTES],
}

ERROR_COMPONENT: dict[str, Any] = {
    "type": "object",
    "description": "AIP-193 error: HTTP status, gRPC status name, message, details.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message", "details"],
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "status": {"type": "string", "description": "The gRPC status code name."},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "description": "One google.rpc.ErrorInfo, then any other detail.",
                    "items": {
                        "type": "object",
                        "required": ["@type"],
                        "properties": {"@type": {"type": "string"}},
                        "additionalProperties": True,
                    },
                },
            },
            "additionalProperties": False,
        }
    },
    "additionalProperties": False,
}


class View(enum.Enum):
    """Which direction a schema describes."""

    OUTPUT = ""
    INPUT = "-Input"
    PATCH = "-Patch"


def behaviors(field: descriptor.FieldDescriptor) -> frozenset[int]:
    """The field's ``google.api.field_behavior`` values."""
    return frozenset(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def output_only(field: descriptor.FieldDescriptor) -> bool:
    """Set by the server only: shown in responses, refused in requests."""
    return field_behavior_pb2.OUTPUT_ONLY in behaviors(field)


def required(field: descriptor.FieldDescriptor) -> bool:
    """REQUIRED and writable: a field a request must send."""
    found = behaviors(field)
    return field_behavior_pb2.REQUIRED in found and field_behavior_pb2.OUTPUT_ONLY not in found


class Schemas:
    """Collects the component schemas of the messages the routes reach."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {ERROR_SCHEMA: ERROR_COMPONENT}

    def message(self, desc: descriptor.Descriptor, view: View) -> dict[str, Any]:
        """A reference to ``desc``'s schema in ``view`` (well-known types inline)."""
        wkt = _WKT.get(desc.full_name)
        if wkt is not None:
            return copy.deepcopy(wkt)
        if view is View.PATCH and not _has_required(desc):
            view = View.INPUT  # nothing to relax: the INPUT schema says the same
        name = desc.full_name + view.value
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages refer to themselves
            self.components[name] = self.fields(desc, view)
        return {"$ref": REF + name}

    def fields(
        self, desc: descriptor.Descriptor, view: View, bound: Iterable[tuple[str, ...]] = ()
    ) -> dict[str, Any]:
        """``desc`` as an object schema, minus the fields at the ``bound`` paths (the URL's)."""
        bound = list(bound)
        properties: dict[str, Any] = {}
        needed: list[str] = []
        for fd in desc.fields:
            if view is not View.OUTPUT and output_only(fd):
                continue  # not writable, so not in a request: sending it is refused
            inner = [path[1:] for path in bound if path[0] == fd.name]
            if any(not rest for rest in inner):
                continue
            if inner and fd.message_type is not None:
                properties[fd.name] = self.fields(fd.message_type, view, inner)
            else:
                properties[fd.name] = self.field(fd, view)
            if view is View.OUTPUT:
                if output_only(fd):
                    properties[fd.name]["readOnly"] = True
                if not fd.has_presence:
                    needed.append(fd.name)  # written even when empty, so always there
            elif view is View.INPUT and required(fd):
                needed.append(fd.name)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if needed:
            schema["required"] = needed
        schema["additionalProperties"] = False
        return schema

    def single(self, fd: descriptor.FieldDescriptor, view: View) -> dict[str, Any]:
        """One value of ``fd`` (an element, for a repeated field)."""
        if fd.message_type is not None:
            return self.message(fd.message_type, view)
        if fd.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
        return copy.deepcopy(_SCALARS[fd.type])

    def field(self, fd: descriptor.FieldDescriptor, view: View) -> dict[str, Any]:
        """The value of ``fd``: a map as an object, a repeated field as an array."""
        message_type = fd.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            return {
                "type": "object",
                "additionalProperties": self.single(message_type.fields_by_name["value"], view),
            }
        if fd.is_repeated:
            return {"type": "array", "items": self.single(fd, view)}
        return self.single(fd, view)


def _has_required(desc: descriptor.Descriptor) -> bool:
    """Whether ``desc`` has a REQUIRED field at any depth."""
    return _has_required_from(desc, frozenset())


def _has_required_from(desc: descriptor.Descriptor, seen: frozenset[str]) -> bool:
    if desc.full_name in _WKT or desc.full_name in seen:
        return False
    inside = seen | {desc.full_name}
    return any(
        required(f) or (f.message_type is not None and _has_required_from(f.message_type, inside))
        for f in desc.fields
    )


def settle_names(document: dict[str, Any]) -> None:
    """Give a request-only message's schema the message's own name, as no response uses it.

    ``X-Input`` becomes ``X`` when there is no ``X``, and ``X-Patch`` becomes ``X`` when
    there is neither ``X`` nor ``X-Input``; every reference follows.
    """
    schemas: dict[str, Any] = document["components"]["schemas"]
    renames: dict[str, str] = {}
    for name in list(schemas):
        for view in (View.INPUT, View.PATCH):
            base = name.removesuffix(view.value)
            if base == name or base in schemas:
                continue
            if view is View.PATCH and base + View.INPUT.value in schemas:
                continue
            renames[REF + name] = REF + base
            schemas[base] = schemas.pop(name)
    if renames:
        _rename_refs(document, renames)


def _rename_refs(node: Any, renames: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in renames:
            node["$ref"] = renames[ref]
        for value in node.values():
            _rename_refs(value, renames)
    elif isinstance(node, list):
        for item in node:
            _rename_refs(item, renames)
