"""Auth use cases: sign-in, refresh rotation, sign-out, sessions."""

import logging
import secrets
import time
from dataclasses import dataclass
from functools import partial

import grpc
from sqlalchemy.ext.asyncio import AsyncSession

from folio.user.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc
from libs.db import after_commit
from libs.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable
from libs.ids import is_ulid
from libs.pagination import page_of, page_request
from libs.revocation import Revocations
from libs.tokens import ACCESS_TOKEN_TTL, sign_access_token
from services.auth import repository
from services.auth.google import GoogleIdentity, GoogleSignIn, nonce_matches
from services.auth.keys import KeyRing
from services.auth.nonces import NonceRegistry
from services.auth.ratelimit import RateLimiter
from services.auth.repository import SessionRow
from services.auth.rotations import IssuedTokens, RecentRotations
from services.auth.settings import AuthSettings

logger = logging.getLogger(__name__)
security_log = logging.getLogger("folio.security")

MAX_REFRESH_TOKEN_CHARS = 256
MAX_NONCE_CHARS = 512
INVALID_REFRESH = "the refresh token is invalid, expired or revoked"


@dataclass
class AuthDeps:
    """What the auth use cases need besides the database session."""

    settings: AuthSettings
    keys: KeyRing
    google: GoogleSignIn
    users: "user_service_pb2_grpc.UserServiceAsyncStub"
    limiter: RateLimiter
    nonces: NonceRegistry
    revocations: Revocations
    rotations: RecentRotations


@dataclass(frozen=True)
class SignedIn:
    tokens: IssuedTokens
    user: user_pb2.User
    new_user: bool


@dataclass(frozen=True)
class GoogleCredential:
    """What the client sent: an ID token, or a code with its PKCE verifier."""

    id_token: str = ""
    code: str = ""
    code_verifier: str = ""
    redirect_uri: str = ""
    nonce: str = ""


def _access_token(deps: AuthDeps, user_id: str, session_id: str) -> tuple[str, int]:
    now = int(time.time())
    token = sign_access_token(
        deps.keys.signing_key(),
        issuer=deps.settings.token_issuer,
        audience=deps.settings.token_audience,
        user_id=user_id,
        session_id=session_id,
        now=now,
    )
    return token, now + ACCESS_TOKEN_TTL


async def _google_identity(deps: AuthDeps, credential: GoogleCredential) -> GoogleIdentity:
    if bool(credential.id_token) == bool(credential.code):
        raise InvalidArgument(
            "send either id_token, or code with code_verifier and redirect_uri",
            field_violations={"id_token": "exactly one of id_token and code is required"},
        )
    if len(credential.nonce) > MAX_NONCE_CHARS:
        raise InvalidArgument("nonce too long", field_violations={"nonce": "too long"})
    id_token = credential.id_token
    if credential.code:
        id_token = await deps.google.exchange_code(
            credential.code,
            credential.code_verifier,
            credential.redirect_uri,
            deps.keys.secrets.google_client_secret,
        )
    identity, token_nonce = await deps.google.verify_id_token(id_token)
    if credential.nonce:
        if not nonce_matches(credential.nonce, token_nonce):
            raise Unauthenticated("the ID token's nonce does not match", reason="NONCE_MISMATCH")
        if not await deps.nonces.first_use(credential.nonce):
            raise Unauthenticated("this nonce was already used", reason="NONCE_REUSED")
    return identity


async def sign_in_with_google(
    deps: AuthDeps, db: AsyncSession, credential: GoogleCredential, *, client_ip: str
) -> SignedIn:
    """Verify the Google credential, create or update the user, start a session."""
    settings = deps.settings
    window = settings.rate_limit_window_seconds
    await deps.limiter.hit(
        "signin-ip", client_ip, limit=settings.rate_limit_signin_per_ip, window=window
    )
    identity = await _google_identity(deps, credential)
    await deps.limiter.hit(
        "signin-sub", identity.sub, limit=settings.rate_limit_signin_per_subject, window=window
    )
    try:
        reply = await deps.users.UpsertGoogleUser(
            user_service_pb2.UpsertGoogleUserRequest(
                google_sub=identity.sub,
                email=identity.email,
                display_name=identity.name,
                picture_url=identity.picture,
            )
        )
    except grpc.aio.AioRpcError as error:
        logger.warning("UpsertGoogleUser failed: %s %s", error.code().name, error.details())
        raise Unavailable("cannot reach the user service") from error
    refresh_token = secrets.token_urlsafe(32)
    session_id = await repository.create_session(
        db,
        user_id=reply.user.id,
        refresh_hash=repository.token_hash(refresh_token),
        ip_address=client_ip,
        idle_ttl=settings.refresh_idle_ttl_seconds,
        absolute_ttl=settings.refresh_absolute_ttl_seconds,
    )
    access_token, expires_at = _access_token(deps, reply.user.id, session_id)
    logger.info(
        "signed in",
        extra={"user_id": reply.user.id, "session_id": session_id, "new_user": reply.created},
    )
    return SignedIn(
        tokens=IssuedTokens(access_token, expires_at, refresh_token, session_id),
        user=reply.user,
        new_user=reply.created,
    )


async def refresh(
    deps: AuthDeps, db: AsyncSession, refresh_token: str, *, client_ip: str
) -> IssuedTokens:
    """Rotate a refresh token; a rotated one presented again revokes its session."""
    settings = deps.settings
    window = settings.rate_limit_window_seconds
    await deps.limiter.hit(
        "refresh-ip", client_ip, limit=settings.rate_limit_refresh_per_ip, window=window
    )
    if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN_CHARS:
        raise Unauthenticated(INVALID_REFRESH)
    old_hash = repository.token_hash(refresh_token)
    owner = await repository.find_token(db, old_hash)
    if owner is None:
        raise Unauthenticated(INVALID_REFRESH)
    await deps.limiter.hit(
        "refresh-sub", owner.user_id, limit=settings.rate_limit_refresh_per_subject, window=window
    )
    new_token = secrets.token_urlsafe(32)
    rotated = await repository.rotate(
        db,
        old_hash=old_hash,
        new_hash=repository.token_hash(new_token),
        idle_ttl=settings.refresh_idle_ttl_seconds,
    )
    if rotated is None:
        # Rotated a moment ago (another tab): the same pair, while the session lives.
        recalled = await deps.rotations.recall(refresh_token)
        if recalled is not None and owner.active:
            return recalled
        await _refused_refresh(deps, db, old_hash, client_ip)
        # The refusal commits: a reuse's revocation must survive the error.
        raise Unauthenticated(INVALID_REFRESH, keep_changes=True)
    session_id, user_id = rotated
    access_token, expires_at = _access_token(deps, user_id, session_id)
    issued = IssuedTokens(access_token, expires_at, new_token, session_id)
    # Before the commit: a refresh of the same token waiting on this row finds it.
    await deps.rotations.remember(refresh_token, issued)
    return issued


async def _refused_refresh(
    deps: AuthDeps, db: AsyncSession, old_hash: bytes, client_ip: str
) -> None:
    """After a failed rotation: if the token was already rotated, that is reuse."""
    # Read again: a concurrent rotation may have just committed.
    owner = await repository.find_token(db, old_hash)
    if owner is None or owner.current or not owner.active:
        return
    revoked = await repository.revoke_session(db, owner.session_id, "refresh_token_reuse")
    if revoked:
        security_log.warning(
            "refresh token reuse: session revoked",
            extra={
                "event": "refresh_token_reuse",
                "user_id": owner.user_id,
                "session_id": owner.session_id,
                "client_ip": client_ip,
            },
        )
        after_commit(db, partial(deps.revocations.revoke_sessions, revoked))


async def sign_out(deps: AuthDeps, db: AsyncSession, refresh_token: str) -> None:
    """Revoke the session of a refresh token; silently nothing for an unknown one."""
    if not refresh_token or len(refresh_token) > MAX_REFRESH_TOKEN_CHARS:
        return
    revoked = await repository.revoke_by_token(db, repository.token_hash(refresh_token), "sign_out")
    after_commit(db, partial(deps.revocations.revoke_sessions, revoked))


async def sign_out_everywhere(deps: AuthDeps, db: AsyncSession, user_id: str) -> int:
    """Revoke every session of the user and every access token issued until now."""
    revoked = await repository.revoke_user_sessions(db, user_id, "sign_out_everywhere")
    after_commit(db, partial(_revoke_all, deps, revoked, user_id))
    security_log.info(
        "signed out everywhere",
        extra={"event": "sign_out_everywhere", "user_id": user_id, "sessions": len(revoked)},
    )
    return len(revoked)


async def list_sessions(
    db: AsyncSession, user_id: str, *, requested_size: int, page_token: str
) -> tuple[list[SessionRow], str]:
    """One page of the user's active sessions and the next page's token."""
    page = page_request(requested_size, page_token)
    rows = await repository.active_sessions(
        db, user_id, limit=page.limit, before_id=page.after[0] if page.after else None
    )
    return page_of(rows, page, lambda row: [row.id])


async def revoke_session(deps: AuthDeps, db: AsyncSession, user_id: str, session_id: str) -> None:
    """Revoke one of the user's sessions; another user's is NOT_FOUND, like a missing one."""
    if not is_ulid(session_id):
        raise NotFound("session not found")
    revoked = await repository.revoke_user_session(db, user_id, session_id, "revoked_by_user")
    if not revoked and not await repository.session_exists(db, user_id, session_id):
        raise NotFound("session not found")
    after_commit(db, partial(deps.revocations.revoke_sessions, revoked))


async def purge_user_data(deps: AuthDeps, db: AsyncSession, user_id: str) -> int:
    """End and delete every session of a user being deleted; idempotent."""
    revoked = await repository.revoke_user_sessions(db, user_id, "account_deleted")
    deleted = await repository.delete_user_sessions(db, user_id)
    after_commit(db, partial(_revoke_all, deps, revoked, user_id))
    return deleted


async def _revoke_all(deps: AuthDeps, revoked: list[str], user_id: str) -> None:
    """Refuse the revoked sessions' tokens, and every token the user was issued until now."""
    await deps.revocations.revoke_sessions(revoked)
    # Also covers tokens outside any session row (dev-minted ones). Tokens issued
    # earlier in this very second pass this check, but their sessions are revoked too.
    await deps.revocations.revoke_user_tokens(user_id, int(time.time()))
