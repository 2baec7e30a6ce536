"""The OpenAPI document generated from the route table."""

from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator

from gateway.openapi import build_openapi, downgrade_to_30
from gateway.routes import RouteTable


@pytest.fixture(scope="module")
def document(table: RouteTable) -> dict[str, Any]:
    return build_openapi(table)


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(document).validate()


def test_docs_rendering_is_valid_openapi_30(document: dict[str, Any]) -> None:
    downgraded = downgrade_to_30(document)
    assert downgraded["openapi"] == "3.0.3"
    OpenAPIV30SpecValidator(downgraded).validate()


def test_paths_and_methods_come_from_the_bindings(document: dict[str, Any]) -> None:
    paths = document["paths"]
    # GET/DELETE bind {name}, PATCH binds {book.name}: same URLs, so one path item.
    assert set(paths["/v1/{name}"]) == {"get", "delete", "patch"}
    assert "/v1/{book_name}" not in paths
    assert set(paths["/v1/books/{name}"]) == {"get"}
    assert set(paths["/v1/echo"]) == {"get", "post"}
    assert "/v1/purge" not in paths
    assert "/v1/undeclared" not in paths


def test_success_codes_follow_the_method_option(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert "201" in paths["/v1/{parent}/books"]["post"]["responses"]
    assert "202" in paths["/v1/{name}:archive"]["post"]["responses"]
    deleted = paths["/v1/{name}"]["delete"]["responses"]["204"]
    assert "content" not in deleted


def test_errors_use_the_aip193_schema(document: dict[str, Any]) -> None:
    responses = document["paths"]["/v1/whoami"]["get"]["responses"]
    assert responses["401"] == {"$ref": "#/components/responses/E401"}
    e401 = document["components"]["responses"]["E401"]
    assert "WWW-Authenticate" in e401["headers"]
    schema = e401["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    error = document["components"]["schemas"][schema]
    assert error["properties"]["error"]["required"] == ["code", "status", "message", "details"]


def test_security_follows_the_access_level(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert paths["/v1/whoami"]["get"]["security"] == [{"bearer": []}]
    assert paths["/v1/echo"]["post"]["security"] == []
    archive = paths["/v1/{name}:archive"]["post"]
    assert archive["x-folio-access"] == "PREMIUM"
    assert {"401", "402", "403"} <= set(archive["responses"])
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_query_parameters_exclude_path_and_body_fields(document: dict[str, Any]) -> None:
    listing = document["paths"]["/v1/{parent}/books"]["get"]["parameters"]
    names = {p["name"]: p for p in listing}
    assert names["parent"]["in"] == "path"
    assert {"page_size", "filter.author", "filter.genres", "filter.min_pages", "tags"} <= set(names)
    assert names["tags"]["schema"] == {"type": "array", "items": {"type": "string"}}
    create = document["paths"]["/v1/{parent}/books"]["post"]["parameters"]
    assert {p["name"] for p in create if p["in"] != "header"} == {"parent", "book_id"}


def test_schemas_use_proto_names_and_int64_strings(document: dict[str, Any]) -> None:
    book = document["components"]["schemas"]["gwtest.v1.Book"]
    assert book["additionalProperties"] is False
    assert book["properties"]["page_count"]["anyOf"][0]["type"] == "string"
    assert book["properties"]["published_at"] == {"type": "string", "format": "date-time"}
    assert book["properties"]["genre"]["enum"][1] == "GENRE_FICTION"


def test_server_streams_offer_sse_and_ndjson(document: dict[str, Any]) -> None:
    stream = document["paths"]["/v1/{parent}/books:stream"]["get"]["responses"]["200"]
    assert set(stream["content"]) == {"text/event-stream", "application/x-ndjson"}


def test_response_body_narrows_the_schema(document: dict[str, Any]) -> None:
    listing = document["paths"]["/v1/{parent}/books"]["get"]["responses"]["200"]
    schema = listing["content"]["application/json"]["schema"]
    assert schema == {"type": "array", "items": {"$ref": "#/components/schemas/gwtest.v1.Book"}}


def test_shared_path_items_rename_placeholders_but_keep_the_field(
    document: dict[str, Any],
) -> None:
    patch = document["paths"]["/v1/{name}"]["patch"]
    path_params = [p for p in patch["parameters"] if p["in"] == "path"]
    assert path_params[0]["name"] == "name"
    assert path_params[0]["x-folio-field"] == "book.name"


def test_body_schema_leaves_out_fields_bound_by_the_path(document: dict[str, Any]) -> None:
    patch = document["paths"]["/v1/{name}"]["patch"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert "name" not in body["properties"]
    assert "title" in body["properties"]
    archive = document["paths"]["/v1/{name}:archive"]["post"]
    body = archive["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"reason"}


def test_output_only_fields_are_read_only(document: dict[str, Any]) -> None:
    book = document["components"]["schemas"]["gwtest.v1.Book"]["properties"]
    assert book["etag"] == {"type": "string", "readOnly": True}
    assert "readOnly" not in book["title"]


def test_request_bodies_leave_out_output_only_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    create = document["paths"]["/v1/{parent}/books"]["post"]["requestBody"]
    ref = create["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert ref == "gwtest.v1.Book-Input"  # the response keeps gwtest.v1.Book
    assert "etag" not in schemas[ref]["properties"]
    assert "title" in schemas[ref]["properties"]
    patch = document["paths"]["/v1/{name}"]["patch"]["requestBody"]
    assert "etag" not in patch["content"]["application/json"]["schema"]["properties"]


def test_responses_require_the_fields_always_written(document: dict[str, Any]) -> None:
    book = document["components"]["schemas"]["gwtest.v1.Book"]
    # Fields without presence are written even when empty; messages only when set.
    assert "title" in book["required"]
    assert "tags" in book["required"]
    assert "etag" in book["required"]
    assert "author" not in book["required"]
    assert "published_at" not in book["required"]
    assert "required" not in document["components"]["schemas"]["gwtest.v1.Book-Input"]


def test_request_only_messages_keep_their_own_name(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    fail = document["paths"]["/v1/fail"]["post"]["requestBody"]["content"]["application/json"]
    assert fail["schema"] == {"$ref": "#/components/schemas/gwtest.v1.FailRequest"}
    assert "gwtest.v1.FailRequest-Input" not in schemas


def test_etag_headers_are_documented_where_they_apply(document: dict[str, Any]) -> None:
    paths = document["paths"]
    get = paths["/v1/{name}"]["get"]
    assert [p["name"] for p in get["parameters"] if p["in"] == "header"] == ["If-None-Match"]
    assert set(get["responses"]["200"]["headers"]) == {"ETag"}
    assert "content" not in get["responses"]["304"]
    assert "ETag" in get["responses"]["304"]["headers"]
    patch = paths["/v1/{name}"]["patch"]
    if_match = [p for p in patch["parameters"] if p["in"] == "header"]
    assert [p["name"] for p in if_match] == ["If-Match"]
    assert "book.etag" in if_match[0]["description"]
    assert "304" not in patch["responses"]
    created = paths["/v1/{parent}/books"]["post"]["responses"]["201"]
    assert set(created["headers"]) == {"ETag"}  # a Book, so its etag
    # No etag in the answer (a list, a stream, whoami) or none in the request (delete).
    for path, method in [
        ("/v1/{parent}/books", "get"),
        ("/v1/{parent}/books:stream", "get"),
        ("/v1/whoami", "get"),
        ("/v1/{name}", "delete"),
    ]:
        operation = paths[path][method]
        assert not [p for p in operation["parameters"] if p["in"] == "header"], path
        assert "304" not in operation["responses"]
