"""Entity tags without domain knowledge: a JSON object's top-level string ``etag`` is its ETag.

A response whose JSON is an object with a non-empty string ``etag`` carries it as
``ETag: "<etag>"``; ``If-Match`` on a method that changes something becomes the request
message's etag field, so the upstream refuses a stale one as it would from the body.
"""

import re
from typing import Any

from google.protobuf import message

from gateway.asgi import Header
from gateway.errors import bad_request
from gateway.routes import Route

# One entity tag of a list: quoted (RFC 9110) or, leniently, bare; W/ (weak) is dropped.
_ENTITY_TAG = re.compile(r'\s*(?:W/)?(?:"([^"]*)"|([^",\s]+))\s*(?:,|$)')
# What an ETag header can carry between its quotes (RFC 9110 etagc, ASCII only).
_ETAGC = re.compile(r"[\x21\x23-\x7e]+")
IF_MATCH = "If-Match"
# A response to a conditional GET keeps only these of the 200's headers (RFC 9110 15.4.5).
NOT_MODIFIED_HEADERS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
)


def entity_tags(value: str) -> list[str] | None:
    """The opaque tags of an If-Match / If-None-Match value, None for ``*``; else ValueError."""
    value = value.strip()
    if value == "*":
        return None
    tags: list[str] = []
    position = 0
    while position < len(value):
        found = _ENTITY_TAG.match(value, position)
        if found is None or found.end() == position:
            raise ValueError(value)
        quoted, bare = found.groups()
        tags.append(quoted if quoted is not None else bare)
        position = found.end()
    if not tags:
        raise ValueError(value)
    return tags


def etag_header(value: Any) -> list[Header]:
    """``[ETag]`` for a JSON object with a top-level string ``etag``, else nothing."""
    if not isinstance(value, dict):
        return []
    etag = value.get("etag")
    if not isinstance(etag, str) or not _ETAGC.fullmatch(etag):
        return []
    return [(b"etag", b'"' + etag.encode() + b'"')]


def none_match(condition: str, etag: bytes) -> bool:
    """Whether If-None-Match ``condition`` names ``etag``, compared weakly (RFC 9110 13.1.2)."""
    try:
        tags = entity_tags(condition)
    except ValueError:
        return False  # a malformed condition is no condition: the full answer follows
    if tags is None:
        return True
    current = etag.decode("latin-1").removeprefix("W/").strip('"')
    return current in tags


def apply_if_match(route: Route, request: message.Message, value: str) -> None:
    """Put If-Match's etag into the request's etag field; 400 where that cannot be done."""
    try:
        tags = entity_tags(value)
    except ValueError:
        raise bad_request(
            "Malformed If-Match header.", [(IF_MATCH, 'expected an entity tag, e.g. "abc"')]
        ) from None
    if tags is None:
        return  # "*": any current version will do, which is what no etag asks for
    path = route.etag_field
    if path is None:
        # Ignoring it would turn a conditional change into an unconditional one.
        raise bad_request(
            "This method cannot be made conditional.",
            [(IF_MATCH, "the method has no etag to compare")],
        )
    if len(tags) != 1:
        raise bad_request("If-Match must name one etag.", [(IF_MATCH, "give exactly one")])
    holder = request
    for name in path[:-1]:
        holder = getattr(holder, name)
    current: str = getattr(holder, path[-1])
    if current and current != tags[0]:
        field = ".".join(path)
        raise bad_request(
            "If-Match and the request's etag differ.",
            [(IF_MATCH, f"differs from {field} in the request")],
        )
    setattr(holder, path[-1], tags[0])
