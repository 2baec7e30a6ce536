"""Identifiers: ULIDs for rows, tasks and requests."""

import re

from ulid import ULID

from libs.errors import InvalidArgument

_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def new_id() -> str:
    """A new ULID in its canonical 26-character form."""
    return str(ULID())


def is_ulid(value: str) -> bool:
    """Whether ``value`` is a canonical ULID (what every Folio id is)."""
    return bool(_ULID.fullmatch(value))


def require_ulid(value: str, field: str) -> str:
    """``value`` if it is a ULID, else INVALID_ARGUMENT naming ``field``."""
    if not is_ulid(value):
        raise InvalidArgument(f"{field} must be a ULID", field_violations={field: "not a ULID"})
    return value
