"""Identifiers: ULIDs for rows, tasks and requests."""

import re

from ulid import ULID

_ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def new_id() -> str:
    """A new ULID in its canonical 26-character form."""
    return str(ULID())


def is_ulid(value: str) -> bool:
    """Whether ``value`` is a canonical ULID (what every Folio id is)."""
    return bool(_ULID.match(value))
