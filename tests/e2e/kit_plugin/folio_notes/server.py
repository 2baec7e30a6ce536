"""Notes: a service written from the kit, holding user data, joining as an entry point.

It exists for the tests: registering it is all it takes for account deletion to purge it.
"""

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.config import Settings
from libs.service import Kit, Parts, PurgeOrder, Service


async def purge(session: AsyncSession, user_id: str) -> int:
    deleted = await session.execute(
        text("DELETE FROM notes.notes WHERE user_id = :user_id"), {"user_id": user_id}
    )
    return int(deleted.rowcount)  # type: ignore[attr-defined]


async def build(_kit: Kit[Settings]) -> Parts:
    return Parts(servicers=[], purge=purge)


SERVICE = Service(
    name="notes",
    port=50099,
    settings=Settings,
    build=build,
    schema="notes",
    migrations=Path(__file__).parent / "migrations",
    purge_order=PurgeOrder.DEFAULT,
)
