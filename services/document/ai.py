"""The AI document operations, run as tasks: generate, summarize, rewrite.

Each streams from LlmService over gRPC on behalf of the user (their premium check and
their budget), reports progress as text arrives, and stops the stream (and with it the
model) when the task is cancelled. The document goes to the model as a cached context
block, so several operations on one document read it from the prompt cache. A rewrite
lands as a new revision by "ai:rewrite" only if nobody changed the document since it was
requested.
"""

import time
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import select, update

from folio.llm.v1 import llm_pb2, llm_service_pb2, llm_service_pb2_grpc
from libs.config import settings_as
from libs.db import get_db_context
from libs.interceptors.access import ON_BEHALF_OF_KEY
from libs.tasks import TaskContext, task
from services.document import handlers
from services.document.handlers import GENERATE_KIND, REWRITE_KIND, SUMMARIZE_KIND
from services.document.models import Document
from services.document.settings import DocumentSettings

OPERATION_KEY = "x-folio-operation"
# The model gets this long per operation; the task's own limit is a little longer.
STREAM_SECONDS = 240
TIME_LIMIT = 300
PROGRESS_EVERY_SECONDS = 0.5
MAX_TOKENS = 4096

GENERATE_SYSTEM = (
    "You write documents in Markdown. Answer with the document only: start with a level-1 "
    "heading that is its title, and add no remarks before or after it."
)
SUMMARY_SYSTEM = (
    "The context above is a document. Summarise it in one short paragraph, in the "
    "document's language. Answer with the summary only."
)
REWRITE_SYSTEM = (
    "The context above is a document in Markdown. Rewrite it as the user asks. Answer "
    "with the whole rewritten document in Markdown only, with no remarks before or after."
)


class OperationRefused(Exception):
    """The model's service refused the call for good: quota, premium, or the request."""


@dataclass
class Answer:
    text: str
    stop_reason: str
    usage: dict[str, int]


def _refusal(error: grpc.aio.AioRpcError) -> str | None:
    """Why a failed call will fail again, or None when another attempt may succeed."""
    reason = ""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    if reason == "QUOTA_EXCEEDED":
        return "the token budget of this period is spent"
    if error.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
    ):
        return f"the model refused the request: {error.details()}"
    return None


async def ask(
    ctx: TaskContext, *, operation: str, instruction: str, system: str, context: str = ""
) -> Answer:
    """Stream one answer from LlmService as the task's user, reporting progress."""
    assert ctx.user_id is not None
    stub = llm_service_pb2_grpc.LlmServiceStub(ctx.channel("llm"))
    request = llm_service_pb2.StreamCompleteRequest(
        messages=[llm_pb2.Message(role="user", content=instruction)],
        system=system,
        context=context,
        max_tokens=MAX_TOKENS,
    )
    call = stub.StreamComplete(
        request,
        metadata=((ON_BEHALF_OF_KEY, ctx.user_id), (OPERATION_KEY, operation)),
        timeout=STREAM_SECONDS,
    )
    parts: list[str] = []
    answer = Answer("", "", {})
    reported = time.monotonic()
    try:
        async for reply in call:
            if reply.HasField("delta"):
                parts.append(reply.delta.text)
                if time.monotonic() - reported >= PROGRESS_EVERY_SECONDS:
                    # Raises TaskCancelled once the owner cancels; the stream then stops.
                    await ctx.progress(min(90, 10 + len(parts) * 80 // MAX_TOKENS))
                    reported = time.monotonic()
            elif reply.HasField("done"):
                usage = reply.done.usage
                answer.stop_reason = reply.done.stop_reason
                answer.usage = {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "cache_read_input_tokens": usage.cache_read_input_tokens,
                    "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                }
    except grpc.aio.AioRpcError as error:
        refusal = _refusal(error)
        if refusal is not None:
            raise OperationRefused(refusal) from error
        raise  # transient: the task runtime retries it with backoff
    finally:
        call.cancel()
    answer.text = "".join(parts).strip()
    return answer


def title_of(markdown: str, fallback: str) -> str:
    """The draft's first heading (or first line), fit for a title."""
    for line in markdown.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:300]
    return fallback[:300] or "Untitled"


def _failed(message: str) -> dict[str, Any]:
    return {"success": False, "error": message}


async def _owned(user_id: str, document_id: str) -> Document | None:
    async with get_db_context() as session:
        document: Document | None = await session.scalar(
            select(Document).where(Document.id == document_id, Document.user_id == user_id)
        )
        return document


def _settings(ctx: TaskContext) -> DocumentSettings:
    return settings_as(DocumentSettings, ctx.settings)


@task(GENERATE_KIND, time_limit=TIME_LIMIT)
async def generate(ctx: TaskContext) -> dict[str, Any]:
    """Draft a new document from the prompt."""
    assert ctx.user_id is not None
    prompt = str(ctx.params.get("prompt", ""))
    try:
        answer = await ask(ctx, operation=GENERATE_KIND, instruction=prompt, system=GENERATE_SYSTEM)
    except OperationRefused as refused:
        return _failed(str(refused))
    if not answer.text:
        return _failed("the model wrote nothing")
    settings = _settings(ctx)
    title = str(ctx.params.get("title") or "") or title_of(answer.text, prompt)
    content = answer.text.encode()[: settings.document_max_content_bytes].decode(errors="ignore")
    async with get_db_context() as session:
        document = await handlers.create_document(
            session, settings, ctx.user_id, title=title, content=content, author="ai:generate"
        )
        document_id = document.id
    return {"document_id": document_id, "stop_reason": answer.stop_reason, "usage": answer.usage}


@task(SUMMARIZE_KIND, time_limit=TIME_LIMIT)
async def summarize(ctx: TaskContext) -> dict[str, Any]:
    """Summarise the document into its summary field."""
    assert ctx.user_id is not None
    document_id = str(ctx.params.get("document_id", ""))
    document = await _owned(ctx.user_id, document_id)
    if document is None:
        return _failed("document not found")
    try:
        answer = await ask(
            ctx,
            operation=SUMMARIZE_KIND,
            instruction="Summarise the document.",
            system=SUMMARY_SYSTEM,
            context=document.content,
        )
    except OperationRefused as refused:
        return _failed(str(refused))
    async with get_db_context() as session:
        await session.execute(
            update(Document)
            .where(Document.id == document_id)
            .values(summary=answer.text, etag=handlers.new_etag())
        )
    return {"document_id": document_id, "summary": answer.text, "usage": answer.usage}


@task(REWRITE_KIND, time_limit=TIME_LIMIT)
async def rewrite(ctx: TaskContext) -> dict[str, Any]:
    """Rewrite the document as a new revision, unless it changed since the request."""
    assert ctx.user_id is not None
    document_id = str(ctx.params.get("document_id", ""))
    base = int(ctx.params.get("base_revision", 0))
    document = await _owned(ctx.user_id, document_id)
    if document is None:
        return _failed("document not found")
    conflict = _failed(
        f"conflict: the document changed after the rewrite was requested (revision {base})"
    )
    if document.revision != base:
        return conflict
    try:
        answer = await ask(
            ctx,
            operation=REWRITE_KIND,
            instruction=str(ctx.params.get("instruction", "")),
            system=REWRITE_SYSTEM,
            context=document.content,
        )
    except OperationRefused as refused:
        return _failed(str(refused))
    if not answer.text:
        return _failed("the model wrote nothing")
    settings = _settings(ctx)
    # The last chance to stop: once the revision is written, the rewrite is done.
    await ctx.checkpoint()
    async with get_db_context() as session:
        current = await session.scalar(
            select(Document).where(Document.id == document_id).with_for_update()
        )
        if current is None:
            return _failed("document not found")
        if current.revision != base:
            return conflict
        content = handlers.check_content(answer.text, settings)
        changed = await handlers.change_document(
            session, current, title=current.title, content=content, author="ai:rewrite"
        )
        revision = changed.revision
    return {"document_id": document_id, "revision": revision, "usage": answer.usage}
