"""Route building from reflected descriptors: access, success codes, bindings."""

from http import HTTPStatus

from gateway.routes import Access, RouteTable
from tests.unit.gateway.conftest import route_of


def test_every_public_binding_is_routed(table: RouteTable) -> None:
    routed = {(r.http_method, r.template.template) for r in table.routes}
    assert ("GET", "/v1/{name=shelves/*/books/*}") in routed
    assert ("GET", "/v1/books/{name=**}") in routed  # additional binding
    assert ("POST", "/v1/echo") in routed
    assert ("GET", "/v1/echo") in routed
    assert ("GET", "/v1/{parent=shelves/*}/books:stream") in routed


def test_internal_and_undeclared_methods_are_never_routed(table: RouteTable) -> None:
    names = {r.method.name for r in table.routes}
    assert "Purge" not in names
    assert "Undeclared" not in names
    assert table.match("POST", "/v1/purge") is None
    assert table.match("GET", "/v1/undeclared") is None


def test_access_and_success_code_come_from_method_options(table: RouteTable) -> None:
    assert route_of(table, "GET", "/v1/shelves/s/books/b").access == Access.PUBLIC
    assert route_of(table, "GET", "/v1/whoami").access == Access.USER
    archive = route_of(table, "POST", "/v1/shelves/s/books/b:archive")
    assert archive.access == Access.PREMIUM
    assert archive.success == HTTPStatus.ACCEPTED
    assert route_of(table, "POST", "/v1/shelves/s/books").success == HTTPStatus.CREATED
    assert route_of(table, "DELETE", "/v1/shelves/s/books/b").success == HTTPStatus.NO_CONTENT
    assert route_of(table, "GET", "/v1/stats").success == HTTPStatus.OK


def test_patch_with_a_body_field_fills_update_mask(table: RouteTable) -> None:
    assert route_of(table, "PATCH", "/v1/shelves/s/books/b").update_mask_field == "update_mask"
    assert route_of(table, "POST", "/v1/shelves/s/books").update_mask_field is None


def test_verb_route_wins_over_plain_variable(table: RouteTable) -> None:
    match = table.match("GET", "/v1/shelves/s1/books:stream")
    assert match is not None
    assert match.route.method.name == "StreamBooks"
    assert match.path_values == {"parent": "shelves/s1"}


def test_allowed_methods_list_every_method_of_a_path(table: RouteTable) -> None:
    assert table.allowed_methods("/v1/shelves/s/books/b") == ["DELETE", "GET", "PATCH"]
    assert table.allowed_methods("/v1/nowhere") == []


def test_duplicate_bindings_keep_the_first(table: RouteTable) -> None:
    doubled = RouteTable([*table.routes, *table.routes])
    assert len(doubled.routes) == len(table.routes)


def test_a_known_verb_is_not_swallowed_by_a_plain_variable(table: RouteTable) -> None:
    assert table.match("GET", "/v1/shelves/s/books/b:archive") is None
    assert table.allowed_methods("/v1/shelves/s/books/b:archive") == ["POST"]
    # An unknown suffix is just part of the id.
    match = table.match("GET", "/v1/shelves/s/books/b:other")
    assert match is not None and match.path_values == {"name": "shelves/s/books/b:other"}
