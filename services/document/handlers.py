"""The document use cases: plain functions over a session and the service's dependencies."""

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import Double, delete, func, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from libs.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from libs.ids import is_ulid, new_id
from libs.pagination import page_of, page_request
from libs.storage import PresignedUpload, Storage
from libs.tasks.queue import TaskQueue
from services.document import content_types, objects
from services.document.models import READY, Attachment, Document, Revision
from services.document.objects import ObjectJanitor
from services.document.settings import DocumentSettings

EXPORT_KIND = "document.export"
GENERATE_KIND = "document.generate"
SUMMARIZE_KIND = "document.summarize"
REWRITE_KIND = "document.rewrite"
MAX_PROMPT_CHARS = 20_000
# PostgreSQL text search configuration of documents.search (the migration's).
SEARCH_CONFIG = "english"
USER = "user"
RESTORE = "restore"


@dataclass
class DocumentDeps:
    """What the document use cases need besides the database session."""

    settings: DocumentSettings
    storage: Storage
    janitor: ObjectJanitor
    tasks: TaskQueue


def _not_found() -> NotFound:
    # One message for an unknown id, a malformed one and another user's document alike.
    return NotFound("document not found")


def word_count(content: str) -> int:
    return len(content.split())


def new_etag() -> str:
    """A fresh etag: it changes with every write of the document."""
    return secrets.token_urlsafe(12)


def check_title(title: str, settings: DocumentSettings) -> str:
    limit = settings.document_max_title_chars
    if not title.strip():
        raise InvalidArgument("a title is required", field_violations={"title": "required"})
    if len(title) > limit:
        raise InvalidArgument(
            "title too long", field_violations={"title": f"at most {limit} characters"}
        )
    if "\x00" in title:
        raise InvalidArgument(
            "title cannot hold NUL characters", field_violations={"title": "contains U+0000"}
        )
    return title


def check_content(content: str, settings: DocumentSettings) -> str:
    limit = settings.document_max_content_bytes
    if len(content.encode()) > limit:
        raise InvalidArgument(
            "content too large",
            field_violations={"content": f"at most {limit} bytes of UTF-8"},
        )
    if "\x00" in content:
        raise InvalidArgument(
            "content cannot hold NUL characters",
            field_violations={"content": "contains U+0000"},
        )
    return content


async def get_owned(
    session: AsyncSession, user_id: str, document_id: str, *, for_update: bool = False
) -> Document:
    """The caller's document, or NOT_FOUND (also for another user's document)."""
    if not is_ulid(document_id):
        raise _not_found()
    query = select(Document).where(Document.id == document_id, Document.user_id == user_id)
    if for_update:
        query = query.with_for_update()
    document = await session.scalar(query)
    if document is None:
        raise _not_found()
    return document


def _check_etag(document: Document, etag: str) -> None:
    if etag and etag != document.etag:
        raise Conflict(
            "the document changed since this etag was read",
            reason="ETAG_MISMATCH",
            metadata={"etag": document.etag},
        )


async def create_document(
    session: AsyncSession,
    settings: DocumentSettings,
    user_id: str,
    *,
    title: str,
    content: str,
    author: str = USER,
) -> Document:
    """A new document, whose first revision is its content."""
    document = Document(
        id=new_id(),
        user_id=user_id,
        title=check_title(title, settings),
        content=check_content(content, settings),
        revision=1,
        etag=new_etag(),
        word_count=word_count(content),
    )
    session.add(document)
    session.add(_revision_of(document, author=author))
    await session.flush()
    await session.refresh(document)
    return document


def _revision_of(document: Document, *, author: str, restored_from: int | None = None) -> Revision:
    return Revision(
        document_id=document.id,
        revision=document.revision,
        title=document.title,
        content=document.content,
        author=author,
        restored_from=restored_from,
        word_count=document.word_count,
    )


async def change_document(
    session: AsyncSession,
    document: Document,
    *,
    title: str,
    content: str,
    author: str,
    restored_from: int | None = None,
) -> Document:
    """Make ``title`` and ``content`` current as a new revision by ``author``."""
    document.title = title
    document.content = content
    document.word_count = word_count(content)
    document.revision += 1
    document.etag = new_etag()
    document.updated_at = func.now()
    session.add(_revision_of(document, author=author, restored_from=restored_from))
    await session.flush()
    await session.refresh(document)
    return document


async def update_document(
    session: AsyncSession,
    settings: DocumentSettings,
    user_id: str,
    document_id: str,
    *,
    changes: dict[str, str],
    etag: str,
) -> Document:
    """Change title and/or content; a stale etag is a conflict, never an overwrite."""
    document = await get_owned(session, user_id, document_id, for_update=True)
    _check_etag(document, etag)
    title = check_title(changes["title"], settings) if "title" in changes else document.title
    content = (
        check_content(changes["content"], settings) if "content" in changes else document.content
    )
    if (title, content) == (document.title, document.content):
        return document
    return await change_document(session, document, title=title, content=content, author=USER)


async def delete_document(
    session: AsyncSession, janitor: ObjectJanitor, user_id: str, document_id: str, etag: str
) -> None:
    """Delete the document and (after commit) every object stored for it."""
    document = await get_owned(session, user_id, document_id, for_update=True)
    _check_etag(document, etag)
    await session.delete(document)
    janitor.delete_after_commit(session, objects.document_prefix(user_id, document_id))


def full_view(view: str) -> bool:
    """Whether a list's ``view`` asks for content: BASIC (or nothing) does not, FULL does."""
    if view.upper() not in ("", "BASIC", "FULL"):
        raise InvalidArgument("unknown view", field_violations={"view": "BASIC or FULL"})
    return view.upper() == "FULL"


async def list_documents(
    session: AsyncSession,
    user_id: str,
    *,
    query: str,
    requested_size: int,
    page_token: str,
    full: bool,
) -> tuple[list[Document], str]:
    """One keyset page of the user's documents: by recency, or by rank for a search.

    Without ``full`` the content is not even read (touching it would be an error).
    """
    if "\x00" in query:
        raise InvalidArgument("q cannot hold NUL characters", field_violations={"q": "U+0000"})
    lean = () if full else (defer(Document.content, raiseload=True),)
    if not query.strip():
        page = page_request(requested_size, page_token, arity=2, scope=["recent"])
        recent = select(Document).options(*lean).where(Document.user_id == user_id)
        if page.after is not None:
            after = (_parse_time(page.after[0]), page.after[1])
            recent = recent.where(tuple_(Document.updated_at, Document.id) < tuple_(*after))
        recent = recent.order_by(Document.updated_at.desc(), Document.id.desc())
        documents = (await session.scalars(recent.limit(page.limit))).all()
        return page_of(documents, page, lambda d: [d.updated_at.isoformat(), d.id])
    page = page_request(requested_size, page_token, arity=2, scope=["search", query])
    tsquery = func.websearch_to_tsquery(literal_column(f"'{SEARCH_CONFIG}'::regconfig"), query)
    # float8, so a rank survives its round trip through the page token exactly.
    rank = func.ts_rank(Document.search, tsquery).cast(Double)
    found = (
        select(Document, rank.label("rank"))
        .options(*lean)
        .where(Document.user_id == user_id, Document.search.op("@@")(tsquery))
    )
    if page.after is not None:
        after_rank = (_parse_rank(page.after[0]), page.after[1])
        found = found.where(tuple_(rank, Document.id) < tuple_(*after_rank))
    found = found.order_by(rank.desc(), Document.id.desc())
    rows = (await session.execute(found.limit(page.limit))).all()
    kept, token = page_of(rows, page, lambda row: [repr(float(row.rank)), row.Document.id])
    return [row.Document for row in kept], token


def _invalid_token() -> InvalidArgument:
    return InvalidArgument(
        "invalid page_token", field_violations={"page_token": "not a token from this list"}
    )


def _parse_time(value: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError as error:
        raise _invalid_token() from error


def _parse_rank(value: str) -> float:
    try:
        return float(value)
    except ValueError as error:
        raise _invalid_token() from error


# --------------------------------------------------------------------------- revisions


async def list_revisions(
    session: AsyncSession, user_id: str, document_id: str, *, requested_size: int, page_token: str
) -> tuple[list[Revision], str]:
    """One page of the document's revisions, newest first, without content."""
    await get_owned(session, user_id, document_id)
    page = page_request(requested_size, page_token)
    statement = (
        select(Revision)
        .options(defer(Revision.content, raiseload=True))
        .where(Revision.document_id == document_id)
    )
    if page.after is not None:
        statement = statement.where(Revision.revision < _parse_int(page.after[0]))
    rows = (
        await session.scalars(statement.order_by(Revision.revision.desc()).limit(page.limit))
    ).all()
    return page_of(rows, page, lambda row: [str(row.revision)])


def _parse_int(value: str) -> int:
    try:
        return int(value)
    except ValueError as error:
        raise _invalid_token() from error


async def get_revision(
    session: AsyncSession, user_id: str, document_id: str, revision: int
) -> Revision:
    await get_owned(session, user_id, document_id)
    found = await session.get(Revision, (document_id, revision))
    if found is None:
        raise NotFound("revision not found")
    return found


async def restore_revision(
    session: AsyncSession, user_id: str, document_id: str, revision: int, etag: str
) -> Document:
    """Bring an earlier revision back as a new one, by "restore"."""
    document = await get_owned(session, user_id, document_id, for_update=True)
    _check_etag(document, etag)
    earlier = await session.get(Revision, (document_id, revision))
    if earlier is None:
        raise NotFound("revision not found")
    return await change_document(
        session,
        document,
        title=earlier.title,
        content=earlier.content,
        author=RESTORE,
        restored_from=revision,
    )


# --------------------------------------------------------------------------- attachments


def _attachment_not_found() -> NotFound:
    return NotFound("attachment not found")


def check_filename(filename: str) -> str:
    if not filename or len(filename) > 255:
        raise InvalidArgument(
            "invalid filename", field_violations={"filename": "1 to 255 characters"}
        )
    if any(char in filename for char in "/\\") or any(ord(char) < 32 for char in filename):
        raise InvalidArgument(
            "invalid filename",
            field_violations={"filename": "a file name, without a path or control characters"},
        )
    return filename


async def create_attachment(
    session: AsyncSession,
    deps: DocumentDeps,
    user_id: str,
    document_id: str,
    *,
    filename: str,
    content_type: str,
    size_bytes: int,
) -> tuple[Attachment, PresignedUpload]:
    """A pending attachment and the presigned upload bound to its size and type."""
    settings = deps.settings
    document = await get_owned(session, user_id, document_id, for_update=True)
    check_filename(filename)
    if content_type not in content_types.ALLOWED:
        raise InvalidArgument(
            "this type of file cannot be attached",
            field_violations={"content_type": "one of " + ", ".join(content_types.ALLOWED)},
        )
    if not 0 < size_bytes <= settings.document_attachment_max_bytes:
        raise InvalidArgument(
            "invalid size",
            field_violations={"size_bytes": f"1 to {settings.document_attachment_max_bytes} bytes"},
        )
    count = await session.scalar(
        select(func.count()).select_from(Attachment).where(Attachment.document_id == document.id)
    )
    if (count or 0) >= settings.document_attachments_per_document:
        raise FailedPrecondition(
            f"a document holds at most {settings.document_attachments_per_document} attachments",
            reason="TOO_MANY_ATTACHMENTS",
        )
    attachment_id = new_id()
    attachment = Attachment(
        id=attachment_id,
        document_id=document.id,
        user_id=user_id,
        filename=filename,
        content_type=content_type,
        size_bytes=size_bytes,
        object_key=objects.attachment_key(user_id, document.id, attachment_id),
    )
    session.add(attachment)
    await session.flush()
    await session.refresh(attachment)
    upload = await deps.storage.presign_upload(
        attachment.object_key,
        size=size_bytes,
        content_type=content_type,
        expires_in=settings.document_upload_url_seconds,
    )
    return attachment, upload


async def get_attachment(
    session: AsyncSession, user_id: str, document_id: str, attachment_id: str
) -> Attachment:
    await get_owned(session, user_id, document_id)
    if not is_ulid(attachment_id):
        raise _attachment_not_found()
    attachment = await session.scalar(
        select(Attachment).where(
            Attachment.id == attachment_id, Attachment.document_id == document_id
        )
    )
    if attachment is None:
        raise _attachment_not_found()
    return attachment


async def complete_attachment(
    session: AsyncSession, deps: DocumentDeps, user_id: str, document_id: str, attachment_id: str
) -> Attachment:
    """Check the uploaded object against what was declared, then mark it ready."""
    attachment = await get_attachment(session, user_id, document_id, attachment_id)
    if attachment.status == READY:
        return attachment
    stored = await deps.storage.head(attachment.object_key)
    if stored is None:
        raise FailedPrecondition(
            "nothing has been uploaded for this attachment yet", reason="UPLOAD_MISSING"
        )
    problem = None
    if stored.size != attachment.size_bytes:
        problem = {"size_bytes": f"declared {attachment.size_bytes}, uploaded {stored.size}"}
    elif stored.content_type != attachment.content_type:
        problem = {
            "content_type": f"declared {attachment.content_type}, uploaded {stored.content_type}"
        }
    else:
        head = await deps.storage.read_range(attachment.object_key, 0, content_types.SNIFF_BYTES)
        if not content_types.matches(attachment.content_type, head):
            problem = {"content_type": f"the file is not {attachment.content_type}"}
    if problem is not None:
        # The attachment stays pending (a new upload may replace the object), but the
        # refused bytes go at once.
        await deps.storage.delete(attachment.object_key)
        raise InvalidArgument("the upload does not match the attachment", field_violations=problem)
    attachment.status = READY
    attachment.updated_at = func.now()
    await session.flush()
    await session.refresh(attachment)
    return attachment


async def list_attachments(
    session: AsyncSession, user_id: str, document_id: str, *, requested_size: int, page_token: str
) -> tuple[list[Attachment], str]:
    await get_owned(session, user_id, document_id)
    page = page_request(requested_size, page_token)
    statement = select(Attachment).where(Attachment.document_id == document_id)
    if page.after is not None:
        statement = statement.where(Attachment.id > page.after[0])
    rows = (await session.scalars(statement.order_by(Attachment.id).limit(page.limit))).all()
    return page_of(rows, page, lambda attachment: [attachment.id])


async def delete_attachment(
    session: AsyncSession,
    janitor: ObjectJanitor,
    user_id: str,
    document_id: str,
    attachment_id: str,
) -> None:
    attachment = await get_attachment(session, user_id, document_id, attachment_id)
    await session.delete(attachment)
    janitor.delete_after_commit(session, attachment.object_key)


async def download_url(deps: DocumentDeps, attachment: Attachment) -> tuple[str, dt.datetime]:
    seconds = deps.settings.document_download_url_seconds
    url = await deps.storage.presign_download(
        attachment.object_key, expires_in=seconds, filename=attachment.filename
    )
    return url, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


# --------------------------------------------------------------------------- exports


async def request_export(
    session: AsyncSession, tasks: TaskQueue, user_id: str, document_id: str
) -> tuple[str, str]:
    """Queue a PDF export of the current revision; returns (task id, status)."""
    document = await get_owned(session, user_id, document_id)
    task = await tasks.enqueue(
        EXPORT_KIND,
        user_id=user_id,
        # Every request is its own task (its result's URL expires); an unchanged
        # revision reuses the stored PDF.
        idempotency_key=f"{EXPORT_KIND}:{document.id}:{new_id()}",
        params={"document_id": document.id},
    )
    return task.task_id, task.status


# --------------------------------------------------------------------------- AI operations


def _check_prompt(field: str, value: str) -> str:
    if not value.strip():
        raise InvalidArgument(f"{field} is required", field_violations={field: "required"})
    if len(value) > MAX_PROMPT_CHARS or "\x00" in value:
        raise InvalidArgument(
            f"invalid {field}",
            field_violations={field: f"at most {MAX_PROMPT_CHARS} characters, no U+0000"},
        )
    return value


async def _queue(
    tasks: TaskQueue, kind: str, user_id: str, params: dict[str, object]
) -> tuple[str, str]:
    task = await tasks.enqueue(
        kind, user_id=user_id, idempotency_key=f"{kind}:{new_id()}", params=params
    )
    return task.task_id, task.status


async def request_generate(
    tasks: TaskQueue, settings: DocumentSettings, user_id: str, *, prompt: str, title: str
) -> tuple[str, str]:
    """Queue a draft of a new document from ``prompt``."""
    _check_prompt("prompt", prompt)
    if title:
        check_title(title, settings)
    return await _queue(tasks, GENERATE_KIND, user_id, {"prompt": prompt, "title": title})


async def request_summary(
    session: AsyncSession, tasks: TaskQueue, user_id: str, document_id: str
) -> tuple[str, str]:
    document = await get_owned(session, user_id, document_id)
    return await _queue(tasks, SUMMARIZE_KIND, user_id, {"document_id": document.id})


async def request_rewrite(
    session: AsyncSession,
    tasks: TaskQueue,
    user_id: str,
    document_id: str,
    *,
    instruction: str,
    etag: str,
) -> tuple[str, str]:
    """Queue a rewrite of the revision current now; a later edit makes it a conflict."""
    _check_prompt("instruction", instruction)
    document = await get_owned(session, user_id, document_id)
    _check_etag(document, etag)
    params = {
        "document_id": document.id,
        "instruction": instruction,
        "base_revision": document.revision,
    }
    return await _queue(tasks, REWRITE_KIND, user_id, params)


# --------------------------------------------------------------------------- purge


async def purge_user(session: AsyncSession, user_id: str, *, janitor: ObjectJanitor) -> int:
    """Delete every document of the user, and after commit every object under their prefix."""
    result = await session.execute(delete(Document).where(Document.user_id == user_id))
    janitor.delete_after_commit(session, objects.user_prefix(user_id))
    return int(result.rowcount)  # type: ignore[attr-defined]
