"""Queueing a task from a service: one EnqueueTask call to the task service, errors mapped."""

from collections.abc import Mapping
from typing import Any

import grpc

from folio.task.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from libs.errors import Unavailable


class TaskQueue:
    """Queues tasks through TaskService on a ``service_channel`` to "task"."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = task_service_pb2_grpc.TaskServiceStub(channel)

    async def enqueue(
        self,
        kind: str,
        *,
        user_id: str,
        idempotency_key: str,
        params: Mapping[str, Any] | None = None,
    ) -> task_pb2.Task:
        """Queue ``kind`` for ``user_id``; the same idempotency key returns the same task."""
        request = task_service_pb2.EnqueueTaskRequest(
            kind=kind, user_id=user_id, idempotency_key=idempotency_key
        )
        if params:
            request.params.update(params)
        try:
            reply = await self._stub.EnqueueTask(request)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("cannot queue the work now; try again") from error
            raise
        task: task_pb2.Task = reply.task
        return task
