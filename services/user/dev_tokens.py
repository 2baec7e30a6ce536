"""Development access tokens, signed with the dev key, for ``folio token mint``."""

from libs.config import Settings
from libs.db import Database
from libs.ids import new_id
from libs.secrets import load_secrets
from libs.tokens import sign_access_token
from services.user import handlers


async def mint_dev_token(
    settings: Settings, database_url: str, *, email: str, premium: bool, admin: bool
) -> str:
    """Create (or find) the user with this e-mail, set their roles, and sign a token for them."""
    database = Database(database_url, pool_size=1)
    try:
        async with database.session() as session:
            user, _ = await handlers.upsert_google_user(
                session,
                google_sub=f"dev:{email.lower()}",
                email=email,
                display_name=email.split("@")[0],
                picture_url="",
            )
            if premium or admin:
                user = await handlers.set_roles(
                    session, user.id, is_premium=premium or None, is_admin=admin or None
                )
    finally:
        await database.dispose()
    return sign_access_token(
        load_secrets(settings).active_key(),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        user_id=user.id,
        session_id=new_id(),
    )
