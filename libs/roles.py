"""Roles for the PREMIUM and ADMIN checks of services other than the user service."""

import grpc

from folio.user.v1 import user_service_pb2, user_service_pb2_grpc
from libs.access import RoleLoader, Roles
from libs.errors import Unavailable


def user_service_roles(channel: grpc.aio.Channel) -> RoleLoader:
    """Loads a user's flags with UserService.GetUser over a ``service_channel`` to "user".

    Wrap it in ``CachedRoles`` so a role change is seen within seconds, not per call.
    """
    stub = user_service_pb2_grpc.UserServiceStub(channel)

    async def load(user_id: str) -> Roles | None:
        try:
            reply = await stub.GetUser(user_service_pb2.GetUserRequest(user_id=user_id))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable("cannot read the user's roles") from error
        return Roles(is_premium=reply.user.is_premium, is_admin=reply.user.is_admin)

    return load
