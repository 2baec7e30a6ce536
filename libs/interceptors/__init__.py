"""The server interceptor shared by every Folio service, and the steps it runs."""

from libs.interceptors.access import AccessPolicy
from libs.interceptors.chain import RequestCheck, ServerChain
from libs.interceptors.field_behavior import check_output_only

__all__ = ["AccessPolicy", "RequestCheck", "ServerChain", "check_output_only"]
