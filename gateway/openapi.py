"""OpenAPI 3.1 generated from the live route table (and a 3.0 rendering for Swagger UI 4)."""

import copy
import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from google.protobuf import descriptor

from gateway.routes import Access, Route, RouteTable
from gateway.schemas import (
    ERROR_SCHEMA,
    REF,
    Schemas,
    View,
    output_only,
    required,
    settle_names,
)
from gateway.transcode import SCALAR_WKT, WKT_PREFIX

_PLACEHOLDER = re.compile(r"\{([^}]+)\}")
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"
MAX_QUERY_DEPTH = 3

ETAG_HEADER: dict[str, Any] = {
    "description": "The resource's `etag`, quoted; send it back as If-None-Match or If-Match.",
    "schema": {"type": "string"},
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


def _query_fields(
    desc: descriptor.Descriptor, prefix: str, depth: int, needed: bool
) -> Iterator[tuple[str, descriptor.FieldDescriptor, bool]]:
    """Query parameter names with their leaf field, and whether a request must send them."""
    for fd in desc.fields:
        if output_only(fd):
            continue
        name = prefix + fd.name
        must = needed and required(fd)
        nested = fd.message_type
        if nested is None or nested.full_name in SCALAR_WKT:
            yield name, fd, must
        elif nested.full_name.startswith(WKT_PREFIX):
            continue  # Struct, Any and friends have no query form
        elif not fd.is_repeated and depth < MAX_QUERY_DEPTH:
            yield from _query_fields(nested, name + ".", depth + 1, must)


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


def _parameters(route: Route, schemas: Schemas, names: dict[str, str]) -> list[dict[str, Any]]:
    """Path then query parameters; ``names`` renames path placeholders to the shared path's."""
    params: list[dict[str, Any]] = []
    request = route.method.input_type
    for variable in route.template.variables:
        schema = schemas.single(_field_at(request, variable.field_path), View.INPUT)
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
    params.extend(_header_parameters(route))
    if route.body == "*":
        return params
    body_name = route.body_field.name if route.body_field is not None else None
    for name, fd, must in _query_fields(request, "", 0, True):
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
                "required": must,
                "schema": schemas.field(fd, View.INPUT),
                **({"style": "form", "explode": True} if fd.is_repeated else {}),
            }
        )
    return params


def _header_parameters(route: Route) -> list[dict[str, Any]]:
    """If-None-Match where a GET answers with an ETag, If-Match where a change takes one."""
    if route.http_method == "GET" and route.response_etag:
        return [
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": (
                    "The ETag of the copy the client holds: 304 without a body while it is "
                    "still current."
                ),
                "schema": {"type": "string"},
            }
        ]
    if route.http_method != "GET" and route.etag_field is not None:
        field = ".".join(route.etag_field)
        return [
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": (
                    f"An ETag: the change is made only if it is still current (else 409). "
                    f"Sets `{field}`; a different `{field}` in the request is a 400."
                ),
                "schema": {"type": "string"},
            }
        ]
    return []


def _request_body(route: Route, schemas: Schemas) -> dict[str, Any] | None:
    """The body's schema: writable fields only, minus those the URL path binds."""
    if not route.body:
        return None
    # A PATCH whose update mask the gateway fills from the body's keys changes only the
    # fields sent, so none is required.
    view = View.PATCH if route.update_mask_field else View.INPUT
    bound = [v.field_path for v in route.template.variables]
    body_field = route.body_field
    if body_field is None:
        request = route.method.input_type
        schema = schemas.fields(request, view, bound) if bound else schemas.message(request, view)
        needed = any(required(fd) for fd in request.fields if (fd.name,) not in bound)
    else:
        inner = [path[1:] for path in bound if path[0] == body_field.name and path[1:]]
        if inner and body_field.message_type is not None and not body_field.is_repeated:
            schema = schemas.fields(body_field.message_type, view, inner)
        else:
            schema = schemas.field(body_field, view)
        needed = required(body_field)
    return {"required": needed, "content": {JSON: {"schema": schema}}}


def _response_schema(route: Route, schemas: Schemas) -> dict[str, Any]:
    if route.response_field is not None:
        return schemas.field(route.response_field, View.OUTPUT)
    return schemas.message(route.method.output_type, View.OUTPUT)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": {"$ref": REF + ERROR_SCHEMA}}}}


def _responses(route: Route, schemas: Schemas) -> dict[str, Any]:
    success = str(int(route.success))
    responses: dict[str, Any] = {}
    schema = _response_schema(route, schemas)
    if route.server_streaming:
        responses[success] = {
            "description": (
                "A stream. With Accept: text/event-stream, one `data:` event per message (a "
                "message that is only a oneof is an event named after its field, e.g. "
                "`event: delta`, with that field as data) and, on failure, a final "
                "`event: error` whose data is the error JSON; otherwise "
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
        if route.response_etag:
            responses[success]["headers"] = {"ETag": ETAG_HEADER}
            if route.http_method == "GET":
                responses["304"] = {
                    "description": "Not modified: If-None-Match named the current ETag.",
                    "headers": {"ETag": ETAG_HEADER},
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
    schemas = Schemas()
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
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Generated live from the services' descriptors. JSON field names are the "
                "proto field names; 64-bit integers are strings; errors follow AIP-193. "
                "Every GET also answers HEAD. A response whose object has an `etag` carries "
                "it as the ETag header. Browsers on allowed origins may call the API (CORS); "
                "responses are gzipped for clients that accept it, streams never."
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
    settle_names(document)
    return document


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
