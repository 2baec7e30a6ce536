"""List pagination per AIP-158: page_size with a default and a cap, opaque keyset tokens."""

import base64
import binascii
import json

from libs.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def page_size(requested: int) -> int:
    """The page size to use for a request's ``page_size`` (0 means the default)."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative", field_violations={"page_size": "negative"}
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(*position: str) -> str:
    """An opaque token for the keyset position after the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def decode_page_token(token: str, arity: int) -> list[str] | None:
    """The keyset position of a ``page_token``; None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        position = None
    if (
        not isinstance(position, list)
        or len(position) != arity
        or not all(isinstance(item, str) for item in position)
    ):
        raise InvalidArgument(
            "invalid page_token", field_violations={"page_token": "not a token from this list"}
        )
    return position
