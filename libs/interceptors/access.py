"""Enforces each RPC's declared access level (PUBLIC, USER, PREMIUM, ADMIN, INTERNAL)."""

from typing import Any

import grpc
import jwt

from libs import access
from libs.access import Principal, RoleLoader
from libs.errors import PermissionDenied, PremiumRequired, Unauthenticated
from libs.interceptors.request_context import metadata_value
from libs.revocation import Revocations
from libs.tokens import (
    SERVICE_TOKEN_TYPE,
    AccessClaims,
    AccessTokenVerifier,
    InvalidToken,
    verify_service_token,
)

ON_BEHALF_OF_KEY = "x-folio-on-behalf-of"


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if any."""
    header = metadata_value(context, "authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _is_service_token(token: str) -> bool:
    try:
        return jwt.get_unverified_header(token).get("typ") == SERVICE_TOKEN_TYPE
    except jwt.PyJWTError:
        return False


class AccessPolicy:
    """Authenticates the caller of a method and checks the method's access level."""

    def __init__(
        self,
        service: str,
        verifier: AccessTokenVerifier,
        internal_token_key: str,
        roles: RoleLoader,
        revocations: Revocations | None = None,
    ) -> None:
        self.service = service
        self.verifier = verifier
        self.internal_token_key = internal_token_key
        self.roles = roles
        self.revocations = revocations

    async def authenticate(
        self, level: int, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal:
        """The principal of this call, or an error when it may not call a method of ``level``."""
        token = bearer_token(context)
        if level == access.PUBLIC:
            return await self._optional_user(token)
        if token is None:
            raise Unauthenticated("missing bearer token")
        if level == access.INTERNAL:
            return self._service(token, context)
        remembered = self.verifier.remembered(token)
        if remembered is not None:
            # A user token verified before: no need to parse its header to tell its kind.
            principal = await self._unrevoked(remembered)
        elif _is_service_token(token):
            principal = self._service(token, context)
            if principal.user_id is None:
                raise Unauthenticated(f"a service call needs {ON_BEHALF_OF_KEY}")
        else:
            principal = await self._user(token)
        if level in (access.PREMIUM, access.ADMIN):
            await self._check_roles(level, principal)
        return principal

    async def _user(self, token: str) -> Principal:
        try:
            claims = await self.verifier.verify(token)
        except InvalidToken as error:
            raise Unauthenticated("invalid access token") from error
        return await self._unrevoked(claims)

    async def _unrevoked(self, claims: AccessClaims) -> Principal:
        if self.revocations is not None and await self.revocations.is_revoked(claims):
            raise Unauthenticated("the session of this access token was signed out")
        return Principal(user_id=claims.user_id, session_id=claims.session_id)

    async def _optional_user(self, token: str | None) -> Principal:
        if token is None or _is_service_token(token):
            return access.ANONYMOUS
        try:
            return await self._user(token)
        except Unauthenticated:
            return access.ANONYMOUS

    def _service(self, token: str, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        try:
            claims = verify_service_token(token, self.internal_token_key, audience=self.service)
        except InvalidToken as error:
            raise Unauthenticated("a valid service token is required") from error
        return Principal(
            service=claims.caller, user_id=metadata_value(context, ON_BEHALF_OF_KEY) or None
        )

    async def _check_roles(self, level: int, principal: Principal) -> None:
        assert principal.user_id is not None
        roles = await self.roles(principal.user_id)
        if roles is None:
            raise Unauthenticated("the user no longer exists")
        if level == access.ADMIN and not roles.is_admin:
            raise PermissionDenied("this method is for administrators", reason="ADMIN_REQUIRED")
        if level == access.PREMIUM and not (roles.is_premium or roles.is_admin):
            raise PremiumRequired("this method needs a premium account")
