"""Requests from path, query and body; responses to JSON; strictness on bad input."""

import json
from typing import Any

import pytest
from google.protobuf import json_format

from gateway.errors import HttpError
from gateway.routes import RouteTable
from gateway.transcode import build_request, parse_json, response_json
from tests.unit.gateway.conftest import route_of

DEPTH = 16


def _request(table: RouteTable, method: str, path: str, query: str = "", body: Any = None):
    match = table.match(method, path)
    assert match is not None
    raw = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    return build_request(match.route, match.path_values, query, raw, DEPTH)


def _as_dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def _violations(error: HttpError) -> dict[str, str]:
    return dict(error.violations)


def test_path_variables_fill_nested_fields(table: RouteTable) -> None:
    request = _request(table, "PATCH", "/v1/shelves/s1/books/b1", body={"title": "T"})
    assert request.book.name == "shelves/s1/books/b1"
    assert request.book.title == "T"


def test_query_parameters_map_to_nested_and_repeated_fields(table: RouteTable) -> None:
    query = "page_size=5&filter.author=Le%20Guin&tags=a&tags=b&filter.genres=GENRE_FICTION"
    query += "&filter.min_pages=100&include_archived=true"
    request = _request(table, "GET", "/v1/shelves/s1/books", query)
    assert _as_dict(request) == {
        "parent": "shelves/s1",
        "page_size": 5,
        "filter": {"author": "Le Guin", "genres": ["GENRE_FICTION"], "min_pages": "100"},
        "tags": ["a", "b"],
        "include_archived": True,
    }


def test_query_reaches_every_scalar_kind(table: RouteTable) -> None:
    query = "text=x&big=9007199254740993&small=-3&flag=false&genre=GENRE_HISTORY"
    query += "&when=2024-01-02T03:04:05Z&blob=aGk%3D&ratio=0.5&ubig=18446744073709551615"
    query += "&bigs=1&bigs=2&maybe=true&author.born=1929"
    request = _request(table, "GET", "/v1/echo", query)
    assert request.big == 9007199254740993
    assert request.ubig == 18446744073709551615
    assert request.when.seconds == 1704164645
    assert request.blob == b"hi"
    assert list(request.bigs) == [1, 2]
    assert request.maybe.value is True
    assert request.author.born == 1929


def test_unknown_query_parameters_are_rejected(table: RouteTable) -> None:
    with pytest.raises(HttpError) as caught:
        _request(table, "GET", "/v1/shelves/s1/books", "page_size=5&pageSize=6&nope=1")
    assert caught.value.http_status == 400
    assert _violations(caught.value) == {
        "pageSize": "unknown query parameter",
        "nope": "unknown query parameter",
    }


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ("parent=x", "parent", "bound by the URL path"),
        ("page_size=1&page_size=2", "page_size", "more than once"),
        ("filter=x", "filter", "only scalar fields"),
        ("include_archived=yes", "include_archived", "true or false"),
        ("page_size=lots", "page_size", "invalid literal"),
    ],
)
def test_bad_query_values_name_their_field(
    table: RouteTable, query: str, field: str, reason: str
) -> None:
    with pytest.raises(HttpError) as caught:
        _request(table, "GET", "/v1/shelves/s1/books", query)
    violations = _violations(caught.value)
    assert field in violations
    assert reason in violations[field]


def test_query_is_refused_when_the_body_takes_every_field(table: RouteTable) -> None:
    with pytest.raises(HttpError) as caught:
        _request(table, "POST", "/v1/echo", "text=x", body={"text": "y"})
    assert "JSON body" in _violations(caught.value)["text"]


def test_body_field_binding(table: RouteTable) -> None:
    request = _request(
        table, "POST", "/v1/shelves/s1/books", "book_id=b9", body={"title": "T", "page_count": "7"}
    )
    assert request.parent == "shelves/s1"
    assert request.book_id == "b9"
    assert request.book.page_count == 7


def test_unknown_body_fields_are_rejected_with_their_paths(table: RouteTable) -> None:
    body = {"title": "T", "colour": "red", "author": {"name": "A", "age": 3}}
    with pytest.raises(HttpError) as caught:
        _request(table, "POST", "/v1/shelves/s1/books", body=body)
    assert set(_violations(caught.value)) == {"book.colour", "book.author.age"}


def test_patch_with_an_unknown_field_is_a_400_not_a_crash(table: RouteTable) -> None:
    with pytest.raises(HttpError) as caught:
        _request(table, "PATCH", "/v1/shelves/s/books/b", body={"title": "T", "nope": 1})
    assert list(_violations(caught.value)) == ["book.nope"]


def test_unknown_fields_inside_repeated_and_maps_are_found(table: RouteTable) -> None:
    with pytest.raises(HttpError) as caught:
        _request(table, "POST", "/v1/echo", body={"author": {"x": 1}, "labels": {"k": "v"}})
    assert set(_violations(caught.value)) == {"author.x"}


def test_struct_fields_take_any_json(table: RouteTable) -> None:
    extra = {"anything": [1, {"goes": None}]}
    request = _request(table, "POST", "/v1/echo", body={"extra": extra})
    assert json_format.MessageToDict(request.extra) == {"anything": [1.0, {"goes": None}]}


def test_a_body_where_the_binding_takes_none_is_rejected(table: RouteTable) -> None:
    with pytest.raises(HttpError) as caught:
        _request(table, "GET", "/v1/whoami", body={"x": 1})
    assert caught.value.reason == "UNEXPECTED_BODY"


def test_type_errors_name_the_field(table: RouteTable) -> None:
    with pytest.raises(HttpError) as caught:
        _request(table, "POST", "/v1/echo", body={"small": "many"})
    assert list(_violations(caught.value)) == ["small"]


@pytest.mark.parametrize("genre", ["0", 0, "GENRE_NOPE", "genre_fiction"])
def test_enums_take_only_their_names(table: RouteTable, genre: Any) -> None:
    with pytest.raises(HttpError) as caught:
        _request(table, "PATCH", "/v1/shelves/s/books/b", body={"genre": genre})
    assert list(_violations(caught.value)) == ["book.genre"]
    named = _request(table, "PATCH", "/v1/shelves/s/books/b", body={"genre": "GENRE_FICTION"})
    assert _as_dict(named)["book"]["genre"] == "GENRE_FICTION"


def test_path_and_body_must_agree(table: RouteTable) -> None:
    same = _request(
        table, "POST", "/v1/shelves/s/books/b:archive", body={"name": "shelves/s/books/b"}
    )
    assert same.name == "shelves/s/books/b"
    with pytest.raises(HttpError):
        _request(table, "POST", "/v1/shelves/s/books/b:archive", body={"name": "other"})


def test_patch_fills_update_mask_from_body_keys(table: RouteTable) -> None:
    request = _request(
        table, "PATCH", "/v1/shelves/s/books/b", body={"title": "T", "author": {"name": "N"}}
    )
    assert sorted(request.update_mask.paths) == ["author.name", "title"]


def test_patch_keeps_a_mask_the_client_sent(table: RouteTable) -> None:
    request = _request(
        table, "PATCH", "/v1/shelves/s/books/b", "update_mask=page_count", body={"title": "T"}
    )
    assert list(request.update_mask.paths) == ["page_count"]


def test_malformed_json_is_a_400() -> None:
    for body in (b"{", b'{"a": 1, "a": 2}', b"\xff\xfe"):
        with pytest.raises(HttpError) as caught:
            parse_json(body, DEPTH)
        assert caught.value.reason == "MALFORMED_JSON"


def test_json_nesting_depth_is_capped() -> None:
    assert parse_json(b"[" * DEPTH + b"]" * DEPTH, DEPTH) is not None
    for body in (b"[" * (DEPTH + 1) + b"]" * (DEPTH + 1), b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(HttpError) as caught:
            parse_json(body, DEPTH)
        assert caught.value.reason == "JSON_TOO_DEEP"


def test_response_uses_proto_names_int64_strings_and_defaults(table: RouteTable) -> None:
    route = route_of(table, "POST", "/v1/echo")
    message = route.response_class(text="x", big=2**60, small=0)
    body = response_json(route, message)
    assert body["big"] == str(2**60)
    assert body["small"] == 0
    assert body["flag"] is False
    assert "ubig" in body


def test_response_body_selects_one_field(table: RouteTable) -> None:
    route = route_of(table, "GET", "/v1/shelves/s/books")
    message: Any = route.response_class(seen="x")
    message.books.add(name="n", page_count=3)
    assert response_json(route, message)[0]["page_count"] == "3"


def test_struct_numbers_keep_their_integer_form(table: RouteTable) -> None:
    route = route_of(table, "POST", "/v1/echo")
    assert route.free_form_json
    message: Any = route.response_class()
    message.extra.update({"n": 12, "x": 1.5, "deep": [{"m": 3}], "huge": 2.0**60})
    message.ratio = 2.0
    body = response_json(route, message)
    assert json.dumps(body["extra"], sort_keys=True) == json.dumps(
        {"n": 12, "x": 1.5, "deep": [{"m": 3}], "huge": 2.0**60}, sort_keys=True
    )
    assert not route_of(table, "GET", "/v1/whoami").free_form_json
