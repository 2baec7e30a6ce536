"""TaskService: proto <-> domain translation only."""

from typing import Any

import grpc

from folio.task.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from libs.access import current_principal, current_user_id
from libs.convert import struct, timestamp, to_dict
from libs.db import current_session
from libs.tasks.models import Task
from services.task import handlers
from services.task.listener import TaskWatchers

Context = grpc.aio.ServicerContext[Any, Any]


def to_proto(task: Task) -> task_pb2.Task:
    return task_pb2.Task(
        task_id=task.id,
        kind=task.kind,
        status=task.status,
        progress=task.progress,
        result=struct(task.result),
        error=task.error,
        attempts=task.attempts,
        cancel_requested=task.cancel_requested,
        created_at=timestamp(task.created_at),
        updated_at=timestamp(task.updated_at),
        started_at=timestamp(task.started_at),
        finished_at=timestamp(task.finished_at),
    )


class TaskService(task_service_pb2_grpc.TaskServiceServicer):
    """Tasks: queue, follow, list, cancel."""

    def __init__(self, watchers: TaskWatchers) -> None:
        self.watchers = watchers

    async def GetTask(
        self, request: task_service_pb2.GetTaskRequest, context: Context
    ) -> task_service_pb2.GetTaskResponse:
        task = await handlers.get_task(
            current_session(),
            self.watchers,
            request.task_id,
            current_user_id(),
            wait_seconds=request.wait_seconds,
            time_remaining=context.time_remaining(),
        )
        return task_service_pb2.GetTaskResponse(task=to_proto(task))

    async def ListTasks(
        self, request: task_service_pb2.ListTasksRequest, context: Context
    ) -> task_service_pb2.ListTasksResponse:
        tasks, token = await handlers.list_tasks(
            current_session(),
            current_user_id(),
            status=request.status,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return task_service_pb2.ListTasksResponse(
            tasks=[to_proto(t) for t in tasks], next_page_token=token
        )

    async def CancelTask(
        self, request: task_service_pb2.CancelTaskRequest, context: Context
    ) -> task_service_pb2.CancelTaskResponse:
        task = await handlers.cancel_task(current_session(), request.task_id, current_user_id())
        return task_service_pb2.CancelTaskResponse(task=to_proto(task))

    async def EnqueueTask(
        self, request: task_service_pb2.EnqueueTaskRequest, context: Context
    ) -> task_service_pb2.EnqueueTaskResponse:
        task, created = await handlers.enqueue(
            current_session(),
            kind=request.kind,
            user_id=request.user_id or current_principal().user_id,
            params=to_dict(request.params),
            idempotency_key=request.idempotency_key,
        )
        return task_service_pb2.EnqueueTaskResponse(task=to_proto(task), created=created)
