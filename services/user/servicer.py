"""UserService: proto <-> domain translation only."""

from typing import Any

import grpc

from folio.user.v1 import user_pb2, user_service_pb2, user_service_pb2_grpc
from libs.access import current_user_id
from libs.convert import struct, timestamp, to_dict
from libs.db import current_session
from libs.errors import InvalidArgument, Unavailable
from libs.statements import StatementPool
from libs.tasks.queue import TaskQueue
from services.user import deletion, handlers
from services.user.models import User

Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(user: User | handlers.UserView) -> user_pb2.User:
    return user_pb2.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        picture_url=user.picture_url,
        is_premium=user.is_premium,
        is_admin=user.is_admin,
        created_at=timestamp(user.created_at),
        updated_at=timestamp(user.updated_at),
    )


def _profile_changes(request: user_service_pb2.UpdateMeRequest) -> dict[str, str]:
    paths = list(request.update_mask.paths)
    if not paths:
        paths = [f for f in handlers.EDITABLE_FIELDS if getattr(request.user, f)]
    if not paths:
        raise InvalidArgument("nothing to update", field_violations={"update_mask": "empty"})
    unknown = {
        p: "not a field of User" for p in paths if p not in user_pb2.User.DESCRIPTOR.fields_by_name
    }
    if unknown:
        raise InvalidArgument("unknown field in update_mask", field_violations=unknown)
    return {path: getattr(request.user, path) for path in paths}


class UserService(user_service_pb2_grpc.UserServiceServicer):
    """Users, their profile and options."""

    def __init__(self, reads: StatementPool, tasks: TaskQueue | None = None) -> None:
        # Hot reads of one user (GetMe, GetUser), outside the per-RPC session.
        self.reads = reads
        # The task service, which queues account deletion.
        self.tasks = tasks

    async def GetMe(
        self, request: user_service_pb2.GetMeRequest, context: Context
    ) -> user_service_pb2.GetMeResponse:
        user = await handlers.read_user(self.reads, current_user_id())
        return user_service_pb2.GetMeResponse(user=to_proto(user))

    async def UpdateMe(
        self, request: user_service_pb2.UpdateMeRequest, context: Context
    ) -> user_service_pb2.UpdateMeResponse:
        changes = _profile_changes(request)
        user = await handlers.update_profile(current_session(), current_user_id(), changes)
        return user_service_pb2.UpdateMeResponse(user=to_proto(user))

    async def GetOptions(
        self, request: user_service_pb2.GetOptionsRequest, context: Context
    ) -> user_service_pb2.GetOptionsResponse:
        user = await handlers.get_user(current_session(), current_user_id())
        return user_service_pb2.GetOptionsResponse(options=struct(user.options))

    async def UpdateOptions(
        self, request: user_service_pb2.UpdateOptionsRequest, context: Context
    ) -> user_service_pb2.UpdateOptionsResponse:
        patch = to_dict(request.patch)
        options = await handlers.update_options(current_session(), current_user_id(), patch)
        return user_service_pb2.UpdateOptionsResponse(options=struct(options))

    async def DeleteMe(
        self, request: user_service_pb2.DeleteMeRequest, context: Context
    ) -> user_service_pb2.DeleteMeResponse:
        if self.tasks is None:
            raise Unavailable("account deletion needs the task service")
        task = await deletion.request_deletion(current_session(), self.tasks, current_user_id())
        return user_service_pb2.DeleteMeResponse(task_id=task.task_id, status=task.status)

    async def GetUser(
        self, request: user_service_pb2.GetUserRequest, context: Context
    ) -> user_service_pb2.GetUserResponse:
        user = await handlers.read_user(self.reads, request.user_id)
        return user_service_pb2.GetUserResponse(user=to_proto(user))

    async def UpsertGoogleUser(
        self, request: user_service_pb2.UpsertGoogleUserRequest, context: Context
    ) -> user_service_pb2.UpsertGoogleUserResponse:
        user, created = await handlers.upsert_google_user(
            current_session(),
            google_sub=request.google_sub,
            email=request.email,
            display_name=request.display_name,
            picture_url=request.picture_url,
        )
        return user_service_pb2.UpsertGoogleUserResponse(user=to_proto(user), created=created)

    async def ListUsers(
        self, request: user_service_pb2.ListUsersRequest, context: Context
    ) -> user_service_pb2.ListUsersResponse:
        users, next_token = await handlers.list_users(
            current_session(), requested_size=request.page_size, page_token=request.page_token
        )
        return user_service_pb2.ListUsersResponse(
            users=[to_proto(user) for user in users], next_page_token=next_token
        )

    async def UpdateUserRoles(
        self, request: user_service_pb2.UpdateUserRolesRequest, context: Context
    ) -> user_service_pb2.UpdateUserRolesResponse:
        user = await handlers.update_roles(
            current_session(),
            current_user_id(),
            request.user_id,
            is_premium=request.is_premium if request.HasField("is_premium") else None,
            is_admin=request.is_admin if request.HasField("is_admin") else None,
        )
        return user_service_pb2.UpdateUserRolesResponse(user=to_proto(user))
