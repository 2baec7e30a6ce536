"""Connection URLs: one spelling in the settings, the form each client library wants."""

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

_DRIVER_SCHEME = re.compile(r"^(?:postgresql|postgres)(?:\+\w+)?://")


def sqlalchemy_url(url: str) -> str:
    """Point a PostgreSQL URL (libpq or any SQLAlchemy spelling) at the psycopg 3 driver."""
    return _DRIVER_SCHEME.sub("postgresql+psycopg://", url, count=1)


def libpq_url(url: str) -> str:
    """The libpq spelling of a PostgreSQL URL, which psycopg's own connect() accepts."""
    return _DRIVER_SCHEME.sub("postgresql://", url, count=1)


def celery_broker_url(redis_url: str) -> str:
    """Turn redis-py's ``unix:///sock?db=N`` into kombu's ``redis+socket:///sock?virtual_host=N``.

    kombu reads the database only from ``virtual_host`` (a ``db`` query parameter is
    overridden), and takes the socket path from a ``socket://`` host.
    """
    parts = urlsplit(redis_url)
    if parts.scheme != "unix":
        return redis_url
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        query.append(("virtual_host", value) if key == "db" else (key, value))
    # Built by hand: urlunsplit drops the "//" of an empty authority for unknown schemes.
    url = f"redis+socket://{parts.netloc}{parts.path}"
    return f"{url}?{urlencode(query, safe='/', quote_via=quote)}" if query else url
