"""The auth schema's queries: sessions, their rotation and revocation."""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.ids import new_id

# Sessions that ended this long ago are deleted (with their token hashes).
KEEP_ENDED_SESSIONS = "7 days"


def token_hash(token: str) -> bytes:
    """SHA-256: refresh tokens carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenOwner:
    """The session a refresh token was issued in, as it is now."""

    session_id: str
    user_id: str
    current: bool
    active: bool


@dataclass(frozen=True)
class SessionRow:
    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ip_address: str


async def create_session(
    db: AsyncSession,
    *,
    user_id: str,
    refresh_hash: bytes,
    ip_address: str,
    idle_ttl: int,
    absolute_ttl: int,
) -> str:
    """Start a session whose current refresh token has ``refresh_hash``."""
    session_id = new_id()
    await db.execute(
        text(
            "INSERT INTO auth.sessions"
            " (id, user_id, refresh_hash, ip_address, idle_expires_at, expires_at)"
            " VALUES (:id, :user_id, :hash, :ip,"
            "  now() + LEAST(:idle, :absolute) * interval '1 second',"
            "  now() + :absolute * interval '1 second')"
        ),
        {
            "id": session_id,
            "user_id": user_id,
            "hash": refresh_hash,
            "ip": ip_address,
            "idle": idle_ttl,
            "absolute": absolute_ttl,
        },
    )
    await _remember_token(db, refresh_hash, session_id)
    return session_id


async def _remember_token(db: AsyncSession, refresh_hash: bytes, session_id: str) -> None:
    await db.execute(
        text("INSERT INTO auth.refresh_tokens (token_hash, session_id) VALUES (:hash, :sid)"),
        {"hash": refresh_hash, "sid": session_id},
    )


async def find_token(db: AsyncSession, refresh_hash: bytes) -> TokenOwner | None:
    """The session of a refresh token ever issued, or None for an unknown one."""
    row = (
        await db.execute(
            text(
                "SELECT s.id, s.user_id, s.refresh_hash = :hash AS current,"
                " (s.revoked_at IS NULL AND s.expires_at > now()"
                "  AND s.idle_expires_at > now()) AS active"
                " FROM auth.refresh_tokens t JOIN auth.sessions s ON s.id = t.session_id"
                " WHERE t.token_hash = :hash"
            ),
            {"hash": refresh_hash},
        )
    ).one_or_none()
    if row is None:
        return None
    return TokenOwner(
        session_id=row.id, user_id=row.user_id, current=row.current, active=row.active
    )


async def rotate(
    db: AsyncSession, *, old_hash: bytes, new_hash: bytes, idle_ttl: int
) -> tuple[str, str] | None:
    """Replace the current refresh token in one conditional UPDATE; (session, user) or None.

    Concurrent rotations of one token queue on the session's row lock; PostgreSQL
    re-checks the WHERE clause against the winner's row, so the others match nothing.
    A sign-out takes the same row lock, so it cannot interleave either.
    """
    row = (
        await db.execute(
            text(
                "UPDATE auth.sessions SET refresh_hash = :new, last_used_at = now(),"
                " idle_expires_at = LEAST(now() + :idle * interval '1 second', expires_at),"
                " updated_at = now()"
                " WHERE refresh_hash = :old AND revoked_at IS NULL"
                " AND expires_at > now() AND idle_expires_at > now()"
                " RETURNING id, user_id"
            ),
            {"new": new_hash, "old": old_hash, "idle": idle_ttl},
        )
    ).one_or_none()
    if row is None:
        return None
    await _remember_token(db, new_hash, row.id)
    return row.id, row.user_id


async def _revoke(db: AsyncSession, where: str, params: dict[str, Any]) -> list[str]:
    result = await db.execute(
        text(
            "UPDATE auth.sessions SET revoked_at = now(), revoked_reason = :reason,"
            f" updated_at = now() WHERE revoked_at IS NULL AND ({where}) RETURNING id"
        ),
        params,
    )
    return [row.id for row in result]


async def revoke_by_token(db: AsyncSession, refresh_hash: bytes, reason: str) -> list[str]:
    """Revoke the session any of whose refresh tokens has this hash."""
    return await _revoke(
        db,
        "id = (SELECT session_id FROM auth.refresh_tokens WHERE token_hash = :hash)",
        {"hash": refresh_hash, "reason": reason},
    )


async def revoke_session(db: AsyncSession, session_id: str, reason: str) -> list[str]:
    return await _revoke(db, "id = :sid", {"sid": session_id, "reason": reason})


async def revoke_user_session(
    db: AsyncSession, user_id: str, session_id: str, reason: str
) -> list[str]:
    return await _revoke(
        db, "id = :sid AND user_id = :uid", {"sid": session_id, "uid": user_id, "reason": reason}
    )


async def revoke_user_sessions(db: AsyncSession, user_id: str, reason: str) -> list[str]:
    """Revoke every session of the user, expired ones too (their tokens may still live)."""
    return await _revoke(db, "user_id = :uid", {"uid": user_id, "reason": reason})


async def session_exists(db: AsyncSession, user_id: str, session_id: str) -> bool:
    found = await db.scalar(
        text("SELECT 1 FROM auth.sessions WHERE id = :sid AND user_id = :uid"),
        {"sid": session_id, "uid": user_id},
    )
    return found is not None


async def active_sessions(
    db: AsyncSession, user_id: str, *, limit: int, before_id: str | None
) -> list[SessionRow]:
    """The user's live sessions, newest first (ULIDs sort by creation)."""
    rows = await db.execute(
        text(
            "SELECT id, created_at, last_used_at, LEAST(idle_expires_at, expires_at) AS ends_at,"
            " ip_address FROM auth.sessions"
            " WHERE user_id = :uid AND revoked_at IS NULL"
            " AND expires_at > now() AND idle_expires_at > now()"
            " AND (CAST(:before AS varchar) IS NULL OR id < :before)"
            " ORDER BY id DESC LIMIT :limit"
        ),
        {"uid": user_id, "before": before_id, "limit": limit},
    )
    return [
        SessionRow(
            id=row.id,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            expires_at=row.ends_at,
            ip_address=row.ip_address,
        )
        for row in rows
    ]


async def purge_ended_sessions(db: AsyncSession) -> int:
    """Delete sessions that ended (revoked or expired) a while ago; returns how many."""
    result = await db.execute(
        text(
            "DELETE FROM auth.sessions WHERE"
            f" LEAST(idle_expires_at, expires_at) < now() - interval '{KEEP_ENDED_SESSIONS}'"
            f" OR revoked_at < now() - interval '{KEEP_ENDED_SESSIONS}'"
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_user_sessions(db: AsyncSession, user_id: str) -> int:
    """Delete every session of the user (their token hashes go with them)."""
    result = await db.execute(
        text("DELETE FROM auth.sessions WHERE user_id = :uid"), {"uid": user_id}
    )
    return int(getattr(result, "rowcount", 0) or 0)
