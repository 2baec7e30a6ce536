"""User use cases: plain functions over a session."""

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from sqlalchemy import Table, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import flag_modified

from libs.access import RoleLoader, Roles
from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.ids import is_ulid, new_id
from libs.pagination import page_of, page_request
from libs.statements import StatementPool
from services.user.models import User

EDITABLE_FIELDS = frozenset({"display_name", "picture_url"})
MAX_DISPLAY_NAME = 100
MAX_URL = 2048
MAX_OPTIONS_BYTES = 64 * 1024


class UserView(NamedTuple):
    """A user as hot reads return it: the columns the API shows."""

    id: str
    email: str
    display_name: str
    picture_url: str
    is_premium: bool
    is_admin: bool
    created_at: dt.datetime
    updated_at: dt.datetime


_READ_USER = (
    "SELECT id, email, display_name, picture_url, is_premium, is_admin, created_at, updated_at"
    " FROM users.users WHERE id = %s"
)
_READ_ROLES = "SELECT is_premium, is_admin FROM users.users WHERE id = %s"


async def read_user(reads: StatementPool, user_id: str) -> UserView:
    """The user, or NOT_FOUND, in one round trip without a transaction (GetMe, GetUser)."""
    row = await reads.fetch_one(_READ_USER, (user_id,)) if is_ulid(user_id) else None
    if row is None:
        raise NotFound("user not found")
    return UserView(*row)


async def get_user(session: AsyncSession, user_id: str) -> User:
    """The user, or NOT_FOUND."""
    user = await session.get(User, user_id) if is_ulid(user_id) else None
    if user is None:
        raise NotFound("user not found")
    return user


def _validate_profile(changes: Mapping[str, str]) -> None:
    violations: dict[str, str] = {}
    unknown = set(changes) - EDITABLE_FIELDS
    for field in sorted(unknown):
        violations[f"update_mask.{field}"] = "only display_name and picture_url can be changed"
    for field, value in changes.items():
        if _has_nul(value):
            violations[field] = "must not contain U+0000"
    name = changes.get("display_name")
    if name is not None and (not name.strip() or len(name) > MAX_DISPLAY_NAME):
        violations["display_name"] = f"must be 1 to {MAX_DISPLAY_NAME} characters"
    url = changes.get("picture_url")
    if url and (len(url) > MAX_URL or urlsplit(url).scheme not in ("http", "https")):
        violations["picture_url"] = "must be an http(s) URL"
    if violations:
        raise InvalidArgument("invalid profile change", field_violations=violations)


async def update_profile(session: AsyncSession, user_id: str, changes: Mapping[str, str]) -> User:
    """Change the display name and/or picture URL."""
    _validate_profile(changes)
    user = await get_user(session, user_id)
    for field, value in changes.items():
        setattr(user, field, value.strip() if field == "display_name" else value)
    await session.flush()
    await session.refresh(user)
    return user


def _has_nul(value: Any) -> bool:
    """Whether a JSON value holds U+0000 anywhere, which PostgreSQL text and JSONB refuse."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, null removes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


async def update_options(
    session: AsyncSession, user_id: str, patch: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge-patch the options under a row lock, so concurrent patches never lose an update."""
    if _has_nul(patch):
        raise InvalidArgument(
            "options cannot hold NUL characters",
            field_violations={"patch": "keys and strings must not contain U+0000"},
        )
    if not is_ulid(user_id):
        raise NotFound("user not found")
    user = await session.scalar(select(User).where(User.id == user_id).with_for_update())
    if user is None:
        raise NotFound("user not found")
    options = merge_patch(user.options, dict(patch))
    if len(json.dumps(options)) > MAX_OPTIONS_BYTES:
        raise InvalidArgument(
            "options too large",
            field_violations={"patch": f"options may take at most {MAX_OPTIONS_BYTES} bytes"},
        )
    user.options = options
    flag_modified(user, "options")
    await session.flush()
    return user.options


async def upsert_google_user(
    session: AsyncSession, *, google_sub: str, email: str, display_name: str, picture_url: str
) -> tuple[User, bool]:
    """Create the user of this Google subject or refresh their e-mail, in one statement."""
    violations = {
        field: "required"
        for field, value in (("google_sub", google_sub), ("email", email))
        if not value
    }
    if violations:
        raise InvalidArgument("google_sub and email are required", field_violations=violations)
    table = User.__table__
    assert isinstance(table, Table)
    statement = insert(table).values(
        id=new_id(),
        google_sub=google_sub,
        email=email,
        display_name=display_name[:MAX_DISPLAY_NAME],
        picture_url=picture_url[:MAX_URL],
    )
    excluded = statement.excluded
    upsert = statement.on_conflict_do_update(
        index_elements=[table.c.google_sub],
        set_={
            "email": excluded.email,
            # A name or picture the user chose is theirs; Google's only fills blanks.
            "display_name": func.coalesce(
                func.nullif(table.c.display_name, ""), excluded.display_name
            ),
            "picture_url": func.coalesce(
                func.nullif(table.c.picture_url, ""), excluded.picture_url
            ),
            "updated_at": func.now(),
        },
    ).returning(table.c.id, literal_column("(xmax = 0)").label("created"))
    row = (await session.execute(upsert)).one()
    user = await session.get(User, row.id, populate_existing=True)
    assert user is not None
    return user, bool(row.created)


def role_loader(reads: StatementPool) -> RoleLoader:
    """Reads a user's flags straight from this service's own table."""

    async def load(user_id: str) -> Roles | None:
        if not is_ulid(user_id):
            return None
        row = await reads.fetch_one(_READ_ROLES, (user_id,))
        return None if row is None else Roles(is_premium=row[0], is_admin=row[1])

    return load


async def set_roles(
    session: AsyncSession, user_id: str, *, is_premium: bool | None, is_admin: bool | None
) -> User:
    """Grant or withdraw premium and admin."""
    user = await get_user(session, user_id)
    if is_premium is not None:
        user.is_premium = is_premium
    if is_admin is not None:
        user.is_admin = is_admin
    await session.flush()
    await session.refresh(user)
    return user


async def list_users(
    session: AsyncSession, *, requested_size: int, page_token: str
) -> tuple[list[User], str]:
    """One page of users, oldest first (ULIDs sort by creation), and the next page's token."""
    page = page_request(requested_size, page_token)
    query = select(User).order_by(User.id).limit(page.limit)
    if page.after is not None:
        query = query.where(User.id > page.after[0])
    users = (await session.scalars(query)).all()
    return page_of(users, page, lambda user: [user.id])


async def update_roles(
    session: AsyncSession,
    actor_id: str,
    user_id: str,
    *,
    is_premium: bool | None,
    is_admin: bool | None,
) -> User:
    """An administrator grants or withdraws roles; nobody removes their own admin role."""
    if user_id == actor_id and is_admin is False:
        raise FailedPrecondition(
            "administrators cannot remove their own admin role", reason="SELF_DEMOTION"
        )
    return await set_roles(session, user_id, is_premium=is_premium, is_admin=is_admin)
