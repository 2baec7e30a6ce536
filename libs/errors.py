"""Domain errors. Raise these anywhere; one interceptor turns them into gRPC status + ErrorInfo."""

from collections.abc import Mapping

import grpc


class FolioError(Exception):
    """An error the caller should see, with its gRPC code and an AIP-193 ErrorInfo reason."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    # Commit the RPC's transaction even though it fails: the refusal itself is recorded
    # (e.g. a reused refresh token revokes its session, then the call is refused).
    keep_changes: bool = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        keep_changes: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.keep_changes = keep_changes


class InvalidArgument(FolioError):
    """The request is malformed; ``field_violations`` maps field paths to what is wrong."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field_violations: Mapping[str, str] | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field_violations: dict[str, str] = dict(field_violations or {})


class Unauthenticated(FolioError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "INVALID_TOKEN"


class PermissionDenied(FolioError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class PremiumRequired(PermissionDenied):
    """The method is premium; the gateway answers 402."""

    reason = "PREMIUM_REQUIRED"


class NotFound(FolioError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(FolioError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class Conflict(FolioError):
    code = grpc.StatusCode.ABORTED
    reason = "CONFLICT"


class FailedPrecondition(FolioError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(FolioError):
    """Rate limit or quota; ``retry_after`` seconds travel in the ErrorInfo metadata."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: int, reason: str | None = None) -> None:
        super().__init__(message, reason=reason, metadata={"retry_after": str(retry_after)})
        self.retry_after = retry_after


class Unavailable(FolioError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"
