"""Server interceptors shared by every Folio service, outermost first."""

from libs.interceptors.access import AccessInterceptor
from libs.interceptors.base import AroundInterceptor
from libs.interceptors.db_session import DbSessionInterceptor
from libs.interceptors.errors import ErrorInterceptor
from libs.interceptors.field_behavior import FieldBehaviorInterceptor
from libs.interceptors.request_context import RequestContextInterceptor

__all__ = [
    "AccessInterceptor",
    "AroundInterceptor",
    "DbSessionInterceptor",
    "ErrorInterceptor",
    "FieldBehaviorInterceptor",
    "RequestContextInterceptor",
]
