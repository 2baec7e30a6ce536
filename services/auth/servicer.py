"""AuthService: proto <-> domain translation only."""

import ipaddress
from typing import Any

import grpc

from folio.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, session_pb2
from libs.access import current_principal, current_user_id
from libs.convert import timestamp
from libs.db import current_session
from libs.interceptors.request_context import metadata_value
from libs.tokens import ACCESS_TOKEN_TTL
from services.auth import handlers
from services.auth.handlers import AuthDeps, GoogleCredential
from services.auth.repository import SessionRow

Context = grpc.aio.ServicerContext[Any, Any]
FORWARDED_FOR_KEY = "x-forwarded-for"


def client_ip(context: Context, trusted_proxy_hops: int) -> str:
    """The caller's address: from X-Forwarded-For as the gateway extends it, else the peer.

    The gateway appends the address it saw, so the entry ``trusted_proxy_hops`` places
    left of the last one is the first address no client could have written.
    """
    forwarded = metadata_value(context, FORWARDED_FOR_KEY)
    if forwarded:
        entries = [entry.strip() for entry in forwarded.split(",") if entry.strip()]
        if entries:
            candidate = entries[max(0, len(entries) - 1 - trusted_proxy_hops)]
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                pass
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


def _session(row: SessionRow, current_session_id: str | None) -> session_pb2.Session:
    return session_pb2.Session(
        id=row.id,
        created_at=timestamp(row.created_at),
        last_used_at=timestamp(row.last_used_at),
        expires_at=timestamp(row.expires_at),
        ip_address=row.ip_address,
        current=row.id == current_session_id,
    )


class AuthService(auth_service_pb2_grpc.AuthServiceServicer):
    """Google sign-in, token refresh and revocation, sessions and the JWKS."""

    def __init__(self, deps: AuthDeps) -> None:
        self.deps = deps

    def _ip(self, context: Context) -> str:
        return client_ip(context, self.deps.settings.trusted_proxy_hops)

    async def SignInWithGoogle(
        self, request: auth_service_pb2.SignInWithGoogleRequest, context: Context
    ) -> auth_service_pb2.SignInWithGoogleResponse:
        credential = GoogleCredential(
            id_token=request.id_token,
            code=request.code,
            code_verifier=request.code_verifier,
            redirect_uri=request.redirect_uri,
            nonce=request.nonce,
        )
        signed_in = await handlers.sign_in_with_google(
            self.deps, current_session(), credential, client_ip=self._ip(context)
        )
        tokens = signed_in.tokens
        return auth_service_pb2.SignInWithGoogleResponse(
            access_token=tokens.access_token,
            token_type="Bearer",
            expires_in=ACCESS_TOKEN_TTL,
            expires_at=timestamp(tokens.expires_at),
            refresh_token=tokens.refresh_token,
            session_id=tokens.session_id,
            user=signed_in.user,
            new_user=signed_in.new_user,
        )

    async def RefreshToken(
        self, request: auth_service_pb2.RefreshTokenRequest, context: Context
    ) -> auth_service_pb2.RefreshTokenResponse:
        tokens = await handlers.refresh(
            self.deps, current_session(), request.refresh_token, client_ip=self._ip(context)
        )
        return auth_service_pb2.RefreshTokenResponse(
            access_token=tokens.access_token,
            token_type="Bearer",
            expires_in=ACCESS_TOKEN_TTL,
            expires_at=timestamp(tokens.expires_at),
            refresh_token=tokens.refresh_token,
            session_id=tokens.session_id,
        )

    async def SignOut(
        self, request: auth_service_pb2.SignOutRequest, context: Context
    ) -> auth_service_pb2.SignOutResponse:
        await handlers.sign_out(self.deps, current_session(), request.refresh_token)
        return auth_service_pb2.SignOutResponse()

    async def SignOutEverywhere(
        self, request: auth_service_pb2.SignOutEverywhereRequest, context: Context
    ) -> auth_service_pb2.SignOutEverywhereResponse:
        count = await handlers.sign_out_everywhere(self.deps, current_session(), current_user_id())
        return auth_service_pb2.SignOutEverywhereResponse(revoked_sessions=count)

    async def ListSessions(
        self, request: auth_service_pb2.ListSessionsRequest, context: Context
    ) -> auth_service_pb2.ListSessionsResponse:
        rows, next_token = await handlers.list_sessions(
            current_session(),
            current_user_id(),
            requested_size=request.page_size,
            page_token=request.page_token,
        )
        current = current_principal().session_id
        return auth_service_pb2.ListSessionsResponse(
            sessions=[_session(row, current) for row in rows], next_page_token=next_token
        )

    async def RevokeSession(
        self, request: auth_service_pb2.RevokeSessionRequest, context: Context
    ) -> auth_service_pb2.RevokeSessionResponse:
        await handlers.revoke_session(
            self.deps, current_session(), current_user_id(), request.session_id
        )
        return auth_service_pb2.RevokeSessionResponse()

    async def GetJwks(
        self, request: auth_service_pb2.GetJwksRequest, context: Context
    ) -> auth_service_pb2.GetJwksResponse:
        # For the gateway to copy onto the HTTP response (RFC 9111).
        context.set_trailing_metadata(
            (("cache-control", f"public, max-age={self.deps.settings.jwks_ttl_seconds}"),)
        )
        keys = [
            auth_service_pb2.Jwk(**{field: str(jwk.get(field, "")) for field in _JWK_FIELDS})
            for jwk in self.deps.keys.jwks()["keys"]
        ]
        return auth_service_pb2.GetJwksResponse(keys=keys)


_JWK_FIELDS = ("kty", "crv", "x", "y", "kid", "alg", "use")
