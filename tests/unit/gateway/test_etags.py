"""Entity tags: parsing conditions, the ETag of a JSON answer, If-Match into the request."""

from typing import Any

import pytest

from gateway.errors import HttpError
from gateway.etags import apply_if_match, entity_tags, etag_header, none_match
from gateway.routes import RouteTable
from tests.unit.gateway.conftest import route_of


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ('"abc"', ["abc"]),
        ('W/"abc"', ["abc"]),
        ("abc", ["abc"]),  # bare, as some clients send it
        ('"a", W/"b" ,"c,d"', ["a", "b", "c,d"]),
        ('"a",', ["a"]),  # an empty list element is allowed (RFC 9110 5.6.1)
        (" * ", None),
    ],
)
def test_entity_tags_are_read_without_quotes_or_weakness(
    value: str, tags: list[str] | None
) -> None:
    assert entity_tags(value) == tags


@pytest.mark.parametrize("value", ["", '"unclosed', '"a" "b"', "a b"])
def test_malformed_lists_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        entity_tags(value)


def test_none_match_compares_weakly() -> None:
    assert none_match('W/"e1"', b'"e1"')
    assert none_match('"e1"', b'W/"e1"')
    assert none_match("*", b'"e1"')
    assert not none_match('"e2"', b'"e1"')
    assert not none_match('"e1', b'"e1"')


@pytest.mark.parametrize(
    ("value", "header"),
    [
        ({"etag": "abc-1_2"}, [(b"etag", b'"abc-1_2"')]),
        ({"etag": ""}, []),
        ({"etag": 'has"quote'}, []),  # cannot be quoted: no header rather than a broken one
        ({"etag": "sp ace"}, []),
        ({"etag": 3}, []),
        ({"book": {"etag": "nested"}}, []),  # top level only
        ([{"etag": "in a list"}], []),
    ],
)
def test_a_json_object_with_a_string_etag_has_an_etag_header(value: Any, header: Any) -> None:
    assert etag_header(value) == header


def test_routes_know_where_if_match_goes(table: RouteTable) -> None:
    assert route_of(table, "PATCH", "/v1/shelves/s/books/b").etag_field == ("book", "etag")
    assert route_of(table, "POST", "/v1/shelves/s/books").etag_field == ("book", "etag")
    assert route_of(table, "DELETE", "/v1/shelves/s/books/b").etag_field is None
    assert route_of(table, "POST", "/v1/echo").etag_field is None
    assert route_of(table, "GET", "/v1/shelves/s/books/b").response_etag is True
    assert route_of(table, "GET", "/v1/shelves/s/books").response_etag is False  # a list
    assert route_of(table, "PATCH", "/v1/shelves/s/books/b").response_etag is False
    assert route_of(table, "GET", "/v1/shelves/s/books:stream").response_etag is False


def test_if_match_sets_the_etag_of_the_body_message(table: RouteTable) -> None:
    route = route_of(table, "PATCH", "/v1/shelves/s/books/b")
    request = route.request_class()
    apply_if_match(route, request, 'W/"e7"')
    assert request.book.etag == "e7"  # type: ignore[attr-defined]
    apply_if_match(route, request, '"e7"')  # the same etag twice is no conflict
    apply_if_match(route, request, "*")
    assert request.book.etag == "e7"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "path", "value", "preset", "reason"),
    [
        ("PATCH", "/v1/shelves/s/books/b", '"a", "b"', "", "give exactly one"),
        ("PATCH", "/v1/shelves/s/books/b", '"a', "", "expected an entity tag"),
        ("PATCH", "/v1/shelves/s/books/b", '"a"', "b", "differs from book.etag"),
        ("DELETE", "/v1/shelves/s/books/b", '"a"', "", "no etag to compare"),
    ],
)
def test_if_match_that_cannot_apply_is_a_400(
    table: RouteTable, method: str, path: str, value: str, preset: str, reason: str
) -> None:
    route = route_of(table, method, path)
    request = route.request_class()
    if preset:
        request.book.etag = preset  # type: ignore[attr-defined]
    with pytest.raises(HttpError) as raised:
        apply_if_match(route, request, value)
    assert raised.value.http_status == 400
    assert [field for field, _ in raised.value.violations] == ["If-Match"]
    assert reason in raised.value.violations[0][1]
