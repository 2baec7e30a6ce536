"""OpenAPI 3.1 generated from the live route table (and a 3.0 rendering for Swagger UI 4)."""

import copy
import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor

from gateway.routes import Access, Route, RouteTable
from gateway.transcode import SCALAR_WKT, WKT_PREFIX

FD = descriptor.FieldDescriptor
REF = "#/components/schemas/"
_PLACEHOLDER = re.compile(r"\{([^}]+)\}")
ERROR_SCHEMA = "google.rpc.Status.AIP193"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"
MAX_QUERY_DEPTH = 3
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

_ERROR_RESPONSES: dict[str, str] = {
    "400": "The request is malformed: see the google.rpc.BadRequest field violations.",
    "401": "A Bearer access token is missing, invalid or expired.",
    "402": "The method needs a premium account.",
    "403": "The caller may not do this.",
    "404": "No such resource (or route).",
    "413": "The request body is too large.",
    "503": "The service behind this route is unavailable.",
    "504": "The request took longer than its deadline.",
}


class _Schemas:
    """Collects component schemas of the messages the routes reach."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {ERROR_SCHEMA: ERROR_COMPONENT}

    def message(self, desc: descriptor.Descriptor) -> dict[str, Any]:
        wkt = _WKT.get(desc.full_name)
        if wkt is not None:
            return copy.deepcopy(wkt)
        name = desc.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages refer to themselves
            self.components[name] = {
                "type": "object",
                "properties": {fd.name: self.annotated(fd) for fd in desc.fields},
                "additionalProperties": False,
            }
        return {"$ref": REF + name}

    def annotated(self, fd: descriptor.FieldDescriptor) -> dict[str, Any]:
        """The field's schema, marked readOnly when the proto says OUTPUT_ONLY (AIP-203)."""
        schema = self.field(fd)
        behaviors = fd.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        return schema

    def single(self, fd: descriptor.FieldDescriptor) -> dict[str, Any]:
        if fd.message_type is not None:
            return self.message(fd.message_type)
        if fd.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
        return copy.deepcopy(_SCALARS[fd.type])

    def field(self, fd: descriptor.FieldDescriptor) -> dict[str, Any]:
        message_type = fd.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            return {
                "type": "object",
                "additionalProperties": self.single(message_type.fields_by_name["value"]),
            }
        if fd.is_repeated:
            return {"type": "array", "items": self.single(fd)}
        return self.single(fd)


def _query_fields(
    desc: descriptor.Descriptor, prefix: str, depth: int
) -> Iterator[tuple[str, descriptor.FieldDescriptor]]:
    for fd in desc.fields:
        name = prefix + fd.name
        nested = fd.message_type
        if nested is None or nested.full_name in SCALAR_WKT:
            yield name, fd
        elif nested.full_name.startswith(WKT_PREFIX):
            continue  # Struct, Any and friends have no query form
        elif not fd.is_repeated and depth < MAX_QUERY_DEPTH:
            yield from _query_fields(nested, name + ".", depth + 1)


def _placeholders(openapi_path: str) -> list[str]:
    return _PLACEHOLDER.findall(openapi_path)


def _field_at(desc: descriptor.Descriptor, path: tuple[str, ...]) -> descriptor.FieldDescriptor:
    fd: descriptor.FieldDescriptor | None = None
    current: descriptor.Descriptor | None = desc
    for part in path:
        fd = current.fields_by_name[part] if current is not None else None
        current = fd.message_type if fd is not None else None
    assert fd is not None
    return fd


def _parameters(route: Route, schemas: _Schemas, names: dict[str, str]) -> list[dict[str, Any]]:
    """Path then query parameters; ``names`` renames path placeholders to the shared path's."""
    params: list[dict[str, Any]] = []
    request = route.method.input_type
    for variable in route.template.variables:
        schema = schemas.single(_field_at(request, variable.field_path))
        if variable.pattern != "[^/]+":
            schema["description"] = f"Matches {variable.pattern} (slashes may be sent as-is)."
        own = variable.name.replace(".", "_")
        params.append(
            {
                "name": names.get(own, own),
                "in": "path",
                "required": True,
                "schema": schema,
                "x-folio-field": variable.name,
            }
        )
    for own in _placeholders(route.template.openapi_path):
        if own.startswith("_w"):
            params.append(
                {
                    "name": names.get(own, own),
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            )
    if route.body == "*":
        return params
    body_name = route.body_field.name if route.body_field is not None else None
    for name, fd in _query_fields(request, "", 0):
        top = name.split(".", 1)[0]
        if top == body_name or any(
            name == b or name.startswith(b + ".") or b.startswith(name + ".")
            for b in route.path_fields
        ):
            continue
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schemas.field(fd),
                **({"style": "form", "explode": True} if fd.is_repeated else {}),
            }
        )
    return params


def _without_bound(
    desc: descriptor.Descriptor, bound: list[tuple[str, ...]], schemas: _Schemas
) -> dict[str, Any]:
    """``desc``'s schema minus the fields the URL path binds (they are not body fields)."""
    if not bound:
        return schemas.message(desc)
    properties: dict[str, Any] = {}
    for fd in desc.fields:
        inner = [path[1:] for path in bound if path[0] == fd.name]
        if any(not rest for rest in inner):
            continue
        if inner and fd.message_type is not None:
            properties[fd.name] = _without_bound(fd.message_type, inner, schemas)
        else:
            properties[fd.name] = schemas.annotated(fd)
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _request_body(route: Route, schemas: _Schemas) -> dict[str, Any] | None:
    if not route.body:
        return None
    bound = [v.field_path for v in route.template.variables]
    body_field = route.body_field
    if body_field is None:
        schema = _without_bound(route.method.input_type, bound, schemas)
    else:
        inner = [path[1:] for path in bound if path[0] == body_field.name and path[1:]]
        if inner and body_field.message_type is not None and not body_field.is_repeated:
            schema = _without_bound(body_field.message_type, inner, schemas)
        else:
            schema = schemas.field(body_field)
    return {"required": False, "content": {JSON: {"schema": schema}}}


def _response_schema(route: Route, schemas: _Schemas) -> dict[str, Any]:
    if route.response_field is not None:
        return schemas.field(route.response_field)
    return schemas.message(route.method.output_type)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF + ERROR_SCHEMA}}}}


def _responses(route: Route, schemas: _Schemas) -> dict[str, Any]:
    success = str(int(route.success))
    responses: dict[str, Any] = {}
    schema = _response_schema(route, schemas)
    if route.server_streaming:
        responses[success] = {
            "description": (
                "A stream. With Accept: text/event-stream, one `data:` event per message and, "
                "on failure, a final `event: error` whose data is the error JSON; otherwise "
                "newline-delimited JSON, one message per line, a failure as a last "
                '`{"error": ...}` line.'
            ),
            "content": {
                SSE: {"schema": {"type": "string"}, "x-folio-event-schema": schema},
                NDJSON: {"schema": {"type": "string"}, "x-folio-line-schema": schema},
            },
        }
    elif route.success == HTTPStatus.NO_CONTENT:
        responses[success] = {"description": "Done; no content."}
    else:
        responses[success] = {
            "description": HTTPStatus(route.success).phrase,
            "content": {JSON: {"schema": schema}},
        }
    wanted = ["400", "404", "413", "503", "504"]
    if route.access != Access.PUBLIC:
        wanted.append("401")
    if route.access == Access.PREMIUM:
        wanted.append("402")
    if route.access in (Access.PREMIUM, Access.ADMIN):
        wanted.append("403")
    for code in sorted(wanted):
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    responses["default"] = _error("Any other error, same shape.")
    return responses


def _gateway_paths() -> dict[str, Any]:
    def simple(summary: str, schema: dict[str, Any], errors: bool = False) -> dict[str, Any]:
        responses: dict[str, Any] = {
            "200": {"description": summary, "content": {JSON: {"schema": schema}}}
        }
        if errors:
            responses["503"] = {"$ref": "#/components/responses/E503"}
        return {
            "get": {
                "operationId": "gateway." + summary.split()[0].lower(),
                "tags": ["gateway"],
                "summary": summary,
                "security": [],
                "responses": responses,
            }
        }

    status = {
        "type": "object",
        "properties": {
            "status": {"type": "string"},
            "upstreams": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["status"],
    }
    return {
        "/healthz": simple("Liveness of the gateway itself.", status),
        "/readyz": simple("Readiness: every upstream's gRPC health is SERVING.", status, True),
    }


def build_openapi(
    table: RouteTable, *, title: str = "Folio API", version: str = "1"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in ``table``."""
    schemas = _Schemas()
    paths: dict[str, Any] = _gateway_paths()
    operation_ids: dict[str, int] = {}
    # Templates that match the same URLs share one path item (and so one Allow list), even
    # when their variables have different names; the first one names the placeholders.
    shared: dict[str, str] = {}
    for route in table.routes:
        path = shared.setdefault(route.template.regex.pattern, route.template.openapi_path)
        names = dict(
            zip(_placeholders(route.template.openapi_path), _placeholders(path), strict=True)
        )
        base_id = route.operation_id
        count = operation_ids.get(base_id, 0)
        operation_ids[base_id] = count + 1
        operation: dict[str, Any] = {
            "operationId": base_id if count == 0 else f"{base_id}.{count + 1}",
            "tags": [route.service],
            "summary": f"{route.method.name} ({route.upstream} service)",
            "parameters": _parameters(route, schemas, names),
            "responses": _responses(route, schemas),
            "security": [] if route.access == Access.PUBLIC else [{"bearer": []}],
            "x-folio-access": route.access.name,
        }
        body = _request_body(route, schemas)
        if body is not None:
            operation["requestBody"] = body
        paths.setdefault(path, {})[route.http_method.lower()] = operation
    responses = {f"E{code}": _error(text) for code, text in _ERROR_RESPONSES.items()}
    responses["E401"]["headers"] = {
        "WWW-Authenticate": {
            "description": 'Always `Bearer error="invalid_token"`.',
            "schema": {"type": "string"},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Generated live from the services' descriptors. JSON field names are the "
                "proto field names; 64-bit integers are strings; errors follow AIP-193."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "responses": responses,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def downgrade_to_30(document: dict[str, Any]) -> dict[str, Any]:
    """The same document as OpenAPI 3.0.3, for Swagger UI 4 (which cannot read 3.1)."""
    result: dict[str, Any] = copy.deepcopy(document)
    result["openapi"] = "3.0.3"

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("contentEncoding", None)
            if "$ref" in node and len(node) > 1:
                # 3.0 ignores siblings of $ref; allOf keeps readOnly and friends meaningful.
                node["allOf"] = [{"$ref": node.pop("$ref")}]
            types = node.get("type")
            if isinstance(types, list):
                non_null = [t for t in types if t != "null"]
                node["type"] = non_null[0] if non_null else "string"
                if "null" in types:
                    node["nullable"] = True
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(result)
    return result
