"""Object storage: one async interface over any S3 endpoint (AWS, MinIO, SeaweedFS)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import TYPE_CHECKING, ParamSpec, TypeVar, cast
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from libs.config import Settings
from libs.errors import Unavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import BucketLocationConstraintType

P = ParamSpec("P")
T = TypeVar("T")

# SigV4 presigned URLs and POST policies are valid for at most seven days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# S3 deletes at most this many keys per DeleteObjects request, and lists as many per page.
_DELETE_BATCH = 1000
_MAX_KEY_BYTES = 1024
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Error codes that mean "try again later" even when the status is below 500.
_RETRYABLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable"}
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", str(HTTPStatus.NOT_FOUND.value)})

_CLIENT_CONFIG = Config(
    signature_version="s3v4",
    # Path-style works with every S3 server and with endpoints that are bare host:ports.
    s3={"addressing_style": "path"},
    # A dead endpoint must fail fast (callers retry a StorageUnavailable), not hang a request.
    connect_timeout=3,
    read_timeout=20,
    # Standard mode retries connection errors, 5xx and throttling with jittered backoff.
    retries={"mode": "standard", "total_max_attempts": 3},
    # Checksums only where S3 requires them (DeleteObjects): not every S3 server
    # understands the newer flexible checksums botocore would otherwise add everywhere.
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)


class StorageError(Exception):
    """Object storage refused a request or answered in a way we cannot use."""


class StorageUnavailable(StorageError, Unavailable):
    """Object storage cannot be reached or failed on its side; the request may be retried."""


class ObjectNotFound(StorageError):
    """No object has this key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object with key {key!r}")
        self.key = key


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """Where objects live and how to reach them."""

    # Endpoint the services use; None means AWS S3 in ``region``.
    url: str | None = None
    # Endpoint put into presigned URLs for clients, when they reach storage by another name.
    public_url: str | None = None
    bucket: str
    # None means boto3's default credential chain (environment, instance role, ...).
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str = "us-east-1"

    @property
    def presign_url(self) -> str | None:
        """The endpoint presigned URLs name."""
        return self.public_url or self.url


@dataclass(frozen=True)
class ObjectInfo:
    """What storage knows about a stored object."""

    size: int
    content_type: str
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class PresignedUpload:
    """A single-use upload a client performs itself, bound to one key, size and type.

    For ``POST``, send a ``multipart/form-data`` body with every entry of ``fields`` and
    then the file as the last part, named ``file``; ``headers`` are extra request headers.
    """

    url: str
    method: str
    headers: dict[str, str]
    fields: dict[str, str]
    expires_at: datetime


def storage_config(settings: Settings) -> StorageConfig:
    """The object storage the settings name (``FOLIO_S3_*``)."""
    return StorageConfig(
        url=settings.s3_url,
        public_url=settings.s3_public_url,
        bucket=settings.s3_bucket,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        region=settings.s3_region,
    )


def _check_key(key: str) -> None:
    """Refuse keys no caller should produce, before they reach storage."""
    if (
        not key
        or key.startswith("/")
        or len(key.encode()) > _MAX_KEY_BYTES
        or _CONTROL_CHARS.search(key)
        or any(part in (".", "..") for part in key.split("/"))
        # Only the last part may be empty ("a/" names a folder marker), never a middle one.
        or "" in key.split("/")[:-1]
    ):
        raise ValueError(f"invalid object key {key!r}")


def _check_expiry(expires_in: int) -> None:
    if not 0 < expires_in <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_in must be 1..{MAX_PRESIGN_SECONDS} seconds")


def content_disposition(filename: str) -> str:
    """An ``attachment`` Content-Disposition naming ``filename`` (RFC 6266, any script)."""
    fallback = "".join(
        char if " " <= char <= "~" and char not in '"\\' else "_" for char in filename
    )
    encoded = quote(filename, safe="")
    return f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{encoded}"


def _status(err: ClientError) -> int:
    return int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code") or "")


def _is_not_found(err: ClientError) -> bool:
    return _code(err) in _NOT_FOUND_CODES or (
        _status(err) == HTTPStatus.NOT_FOUND and _code(err) != "NoSuchBucket"
    )


def _translate(err: BotoCoreError | ClientError, action: str, key: str | None) -> StorageError:
    if isinstance(err, ClientError):
        status, code = _status(err), _code(err)
        if (
            status >= HTTPStatus.INTERNAL_SERVER_ERROR
            or status == HTTPStatus.TOO_MANY_REQUESTS
            or code in _RETRYABLE_CODES
        ):
            # The message may reach clients as UNAVAILABLE: no endpoint, bucket or key.
            return StorageUnavailable(f"object storage is unavailable ({code or status})")
        if key is not None and _is_not_found(err):
            return ObjectNotFound(key)
        target = f" {key!r}" if key is not None else ""
        return StorageError(f"{action}{target} failed: {code or status}")
    if isinstance(err, BotoConnectionError | HTTPClientError | IncompleteReadError):
        return StorageUnavailable("object storage is unavailable (connection failed)")
    return StorageError(f"{action} failed: {err}")


class Storage:
    """Objects in one bucket. Every method runs boto3 (blocking) in a worker thread."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self.bucket = config.bucket
        session = boto3.session.Session(
            aws_access_key_id=config.access_key,
            aws_secret_access_key=config.secret_key,
            region_name=config.region,
        )
        # boto3 clients are thread-safe; sessions are not, so both are made here, once.
        self._client: S3Client = session.client(
            "s3", endpoint_url=config.url, config=_CLIENT_CONFIG
        )
        # Presigned URLs embed (and sign) the host, so clients get the public endpoint's.
        self._presigner: S3Client = session.client(
            "s3", endpoint_url=config.presign_url, config=_CLIENT_CONFIG
        )

    def close(self) -> None:
        """Release the HTTP connection pools."""
        self._client.close()
        self._presigner.close()

    async def _run(
        self,
        action: str,
        key: str | None,
        func: Callable[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except (BotoCoreError, ClientError) as err:
            raise _translate(err, action, key) from err

    # ------------------------------------------------------------------- bucket

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists already."""
        await self._run("create bucket", None, self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as err:
            if _status(err) != HTTPStatus.NOT_FOUND:
                raise
        try:
            if self.config.region == "us-east-1":
                self._client.create_bucket(Bucket=self.bucket)
            else:
                self._client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={
                        "LocationConstraint": cast(
                            "BucketLocationConstraintType", self.config.region
                        )
                    },
                )
        except ClientError as err:
            # Another process created it between our check and our create.
            if _code(err) != "BucketAlreadyOwnedByYou":
                raise

    # ------------------------------------------------------------------- objects

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing any object there."""
        _check_key(key)
        await self._run(
            "put",
            key,
            self._client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
        )

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size, type and etag, or None if there is no such object."""
        _check_key(key)
        return await self._run("head", key, self._head, key)

    def _head(self, key: str) -> ObjectInfo | None:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            # HEAD has no body, so a missing key comes back as a bare 404.
            if _status(err) == HTTPStatus.NOT_FOUND:
                return None
            raise
        return ObjectInfo(
            size=response["ContentLength"],
            content_type=response.get("ContentType") or "binary/octet-stream",
            etag=response["ETag"].strip('"'),
            last_modified=response["LastModified"],
        )

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from offset ``start``; fewer (or none) past the end."""
        _check_key(key)
        if start < 0 or length <= 0:
            raise ValueError("read_range needs start >= 0 and length > 0")
        return await self._run("read", key, self._read_range, key, start, length)

    def _read_range(self, key: str, start: int, length: int) -> bytes:
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
        except ClientError as err:
            if _status(err) == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE:
                return b""  # the range starts at or past the end of the object
            raise
        with response["Body"] as body:
            # A server that ignores Range sends everything; keep to what was asked.
            data = body.read()
        if "ContentRange" not in response:
            data = data[start : start + length]
        return data

    async def get(self, key: str) -> bytes:
        """The whole object; ObjectNotFound if there is none."""
        _check_key(key)
        return await self._run("get", key, self._get, key)

    def _get(self, key: str) -> bytes:
        response = self._client.get_object(Bucket=self.bucket, Key=key)
        with response["Body"] as body:
            return body.read()

    async def delete(self, key: str) -> None:
        """Remove the object; removing one that is not there is not an error."""
        _check_key(key)
        await self._run("delete", key, self._delete, key)

    def _delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if not _is_not_found(err):
                raise

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; returns how many.

        The match is on raw characters: end the prefix with ``/`` to mean a folder.
        """
        if not prefix:
            raise ValueError("delete_prefix needs a non-empty prefix")
        _check_key(prefix + "x")  # the prefix of a valid key
        return await self._run("delete prefix", prefix, self._delete_prefix, prefix)

    def _delete_prefix(self, prefix: str) -> int:
        deleted = 0
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": _DELETE_BATCH}
        )
        for page in pages:
            keys = [item["Key"] for item in page.get("Contents", [])]
            if not keys:
                continue
            response = self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                code = first.get("Code", "")
                if code in _RETRYABLE_CODES or code == "InternalError":
                    raise StorageUnavailable(f"object storage is unavailable ({code})")
                raise StorageError(
                    f"delete prefix {prefix} failed for {len(errors)} objects, "
                    f"first {first.get('Key')!r}: {code}"
                )
            deleted += len(keys)
        return deleted

    # ------------------------------------------------------------------- presigned

    async def presign_upload(
        self, key: str, *, size: int, content_type: str, expires_in: int
    ) -> PresignedUpload:
        """A browser-ready upload that storage accepts only with exactly ``size`` bytes
        of type ``content_type``, to ``key``, before it expires.

        A POST policy, not a presigned PUT: both are enforced by SeaweedFS 4.48 (checked
        against the real server: a body one byte longer or shorter gets 400 EntityTooLarge
        or EntityTooSmall, another Content-Type or key 403 AccessDenied, and a PUT whose
        Content-Length or Content-Type differs from the signed one 403
        SignatureDoesNotMatch), but the policy's ``content-length-range`` and field
        conditions are S3's specified way to bound a browser upload, checked by AWS and
        MinIO alike, whereas a signed Content-Length binds only servers that recompute
        the signature over that header.
        """
        _check_key(key)
        _check_expiry(expires_in)
        if size < 0:
            raise ValueError("size must be >= 0")
        if not content_type or _CONTROL_CHARS.search(content_type):
            raise ValueError(f"invalid content type {content_type!r}")
        # Taken before signing, so the policy never expires before the stated time.
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_in)
        post = await self._run(
            "presign upload",
            key,
            self._presigner.generate_presigned_post,
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                {"Content-Type": content_type},
                ["content-length-range", size, size],
            ],
            ExpiresIn=expires_in,
        )
        return PresignedUpload(
            url=post["url"],
            method="POST",
            headers={},
            fields={name: str(value) for name, value in post["fields"].items()},
            expires_at=expires_at,
        )

    async def presign_download(
        self, key: str, *, expires_in: int, filename: str | None = None
    ) -> str:
        """A GET URL for the object, valid for ``expires_in`` seconds.

        With ``filename``, browsers save the download under that name.
        """
        _check_key(key)
        _check_expiry(expires_in)
        params = {"Bucket": self.bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        return await self._run(
            "presign download",
            key,
            self._presigner.generate_presigned_url,
            "get_object",
            Params=params,
            ExpiresIn=expires_in,
        )
