"""Pagination tokens and the client address behind the gateway."""

from typing import Any

import pytest

from libs.errors import InvalidArgument
from libs.pagination import MAX_PAGE_SIZE, decode_page_token, encode_page_token, page_size
from services.auth.servicer import client_ip


def test_page_sizes_default_and_cap() -> None:
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(10_000) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_page_tokens_round_trip_and_garbage_is_refused() -> None:
    assert decode_page_token("", 1) is None
    assert decode_page_token(encode_page_token("01ABC"), 1) == ["01ABC"]
    for bad in ("!!", "e30", encode_page_token("a", "b"), encode_page_token()):
        with pytest.raises(InvalidArgument):
            decode_page_token(bad, 1)


class FakeContext:
    """Only what client_ip reads: metadata and the peer."""

    def __init__(self, forwarded: str | None, peer: str = "ipv4:127.0.0.1:5555") -> None:
        self.metadata = (("x-forwarded-for", forwarded),) if forwarded is not None else ()
        self._peer = peer

    def invocation_metadata(self) -> Any:
        return self.metadata

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("forwarded", "hops", "expected"),
    [
        (None, 0, "127.0.0.1"),
        ("203.0.113.5", 0, "203.0.113.5"),
        ("1.1.1.1, 203.0.113.5", 0, "203.0.113.5"),
        ("1.1.1.1, 203.0.113.5", 1, "1.1.1.1"),
        ("203.0.113.5", 3, "203.0.113.5"),
        ("not-an-ip", 0, "127.0.0.1"),
        ("2001:db8::1", 0, "2001:db8::1"),
    ],
)
def test_client_ip(forwarded: str | None, hops: int, expected: str) -> None:
    assert client_ip(FakeContext(forwarded), hops) == expected  # type: ignore[arg-type]


def test_client_ip_of_an_ipv6_peer() -> None:
    assert client_ip(FakeContext(None, "ipv6:[::1]:4000"), 0) == "::1"  # type: ignore[arg-type]
