"""The router: gateway endpoints first, then the upstreams' routes; 404 and 405 as data."""

from typing import Any

import pytest

from gateway.router import Router
from gateway.routes import RouteTable


async def page(_request: Any) -> Any:
    return None


async def asset(_request: Any) -> Any:
    return None


@pytest.fixture
def router(table: RouteTable) -> Router:
    return Router({"/healthz": page, "/docs/": page}, {"/docs/": asset}, lambda: table)


def test_gateway_paths_win_and_answer_get_and_head_only(router: Router) -> None:
    assert router.match("GET", "/healthz", "/healthz").endpoint is page
    assert router.match("HEAD", "/healthz", "/healthz").endpoint is page
    refused = router.match("POST", "/healthz", "/healthz")
    assert refused.endpoint is None and refused.allowed == ("GET",)
    assert router.match("GET", "/docs/", "/docs/").endpoint is page  # exact before prefix
    assert router.match("GET", "/docs/x.js", "/docs/x.js").endpoint is asset


def test_upstream_routes_match_on_the_raw_path(router: Router) -> None:
    routed = router.match("GET", "/v1/shelves/s1/books/b", "/v1/shelves/s1/books/b")
    assert routed.upstream is not None
    assert routed.upstream.route.operation_id == "gwtest.v1.LibraryService.GetBook"
    assert routed.upstream.path_values == {"name": "shelves/s1/books/b"}


def test_a_path_whose_slashes_a_client_encoded_still_matches(router: Router) -> None:
    # OpenAPI clients percent-encode the slashes of {name=shelves/*/books/*}.
    raw = "/v1/shelves%2Fs1%2Fbooks%2Fb"
    routed = router.match("GET", "/v1/shelves/s1/books/b", raw)
    assert routed.upstream is not None
    assert routed.upstream.path_values == {"name": "shelves/s1/books/b"}
    assert router.match("PUT", "/v1/shelves/s1/books/b", raw).allowed == ("DELETE", "GET", "PATCH")


def test_a_known_path_with_another_method_lists_the_allowed_ones(router: Router) -> None:
    routed = router.match("PUT", "/v1/shelves/s/books/b", "/v1/shelves/s/books/b")
    assert routed.upstream is None and routed.endpoint is None
    assert routed.allowed == ("DELETE", "GET", "PATCH")


def test_an_unknown_path_matches_nothing(router: Router) -> None:
    routed = router.match("GET", "/v1/nowhere", "/v1/nowhere")
    assert (routed.endpoint, routed.upstream, routed.allowed) == (None, None, ())


def test_head_takes_the_get_route_of_any_upstream_path(router: Router) -> None:
    routed = router.match("HEAD", "/v1/shelves/s1/books/b", "/v1/shelves/s1/books/b")
    assert routed.upstream is not None
    assert routed.upstream.route.operation_id == "gwtest.v1.LibraryService.GetBook"
    refused = router.match("HEAD", "/v1/purge", "/v1/purge")  # no GET there: nothing to HEAD
    assert refused.upstream is None and refused.endpoint is None
