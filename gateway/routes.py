"""The route table: google.api.http bindings of reflected methods, matched per request."""

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import grpc
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pool, message, message_factory

from gateway.httprule import PathTemplate, TemplateError, parse_template
from gateway.reflection import Descriptors

log = logging.getLogger(__name__)

ACCESS_OPTION = "folio.api.v1.access"
SUCCESS_CODE_OPTION = "folio.api.v1.http_success_code"
FIELD_MASK = "google.protobuf.FieldMask"
# JSON values without a schema: their numbers travel as doubles.
FREE_FORM = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
HTTP_METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH")
# The one field name entity tags are read from and written to, in any message.
ETAG = "etag"


class Access(enum.IntEnum):
    """Mirror of folio.api.v1.Access, read from reflected options (no generated code)."""

    UNSPECIFIED = 0
    PUBLIC = 1
    USER = 2
    PREMIUM = 3
    ADMIN = 4
    INTERNAL = 5


@dataclass(eq=False)
class Route:
    """One HTTP binding of one RPC, with everything a request needs precomputed."""

    http_method: str
    template: PathTemplate
    upstream: str
    service: str
    method: descriptor.MethodDescriptor
    pool: descriptor_pool.DescriptorPool
    request_class: type[message.Message]
    response_class: type[message.Message]
    body: str
    response_body: str
    access: Access
    success: HTTPStatus
    server_streaming: bool
    call: Any
    # Top-level request field the PATCH feature fills from the body's keys, if any.
    update_mask_field: str | None = None
    # Query parameter name -> its field chain; filled on first use of each valid name.
    query_fields: dict[str, tuple[descriptor.FieldDescriptor, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fields_in, fields_out = (
            self.method.input_type.fields_by_name,
            self.method.output_type.fields_by_name,
        )
        self.body_field = fields_in.get(self.body) if self.body not in ("", "*") else None
        self.response_field = fields_out.get(self.response_body) if self.response_body else None
        self.path_fields = frozenset(v.name for v in self.template.variables)
        self.free_form_json = _reaches(self.method.output_type, FREE_FORM, set())
        # Where If-Match goes: the request's own etag, else that of the message the body is.
        self.etag_field: tuple[str, ...] | None = None
        if _has_etag(self.method.input_type):
            self.etag_field = (ETAG,)
        elif (
            self.body_field is not None
            and not self.body_field.is_repeated
            and _has_etag(self.body_field.message_type)
        ):
            self.etag_field = (self.body_field.name, ETAG)
        # Whether the JSON answer is an object that may carry an etag (so an ETag header).
        if self.server_streaming:
            self.response_etag = False
        elif self.response_field is None:
            self.response_etag = _has_etag(self.method.output_type)
        else:
            self.response_etag = not self.response_field.is_repeated and _has_etag(
                self.response_field.message_type
            )

    @property
    def full_method(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def operation_id(self) -> str:
        return f"{self.service}.{self.method.name}"


@dataclass(frozen=True)
class Match:
    """A route and the decoded values of its path variables."""

    route: Route
    path_values: dict[str, str]


class RouteTable:
    """An immutable set of routes; a new table replaces the old one in a single assignment."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        routes_list = list(routes)
        self.routes: list[Route] = []
        self._literal: dict[tuple[str, str], Route] = {}
        self._templated: dict[str, list[Route]] = {}
        self._literal_paths: set[str] = set()
        self._verbs: frozenset[str] = frozenset(
            r.template.verb for r in routes_list if r.template.verb
        )
        seen: dict[tuple[str, str], Route] = {}
        for route in routes_list:
            key = (route.http_method, route.template.regex.pattern)
            if key in seen:
                log.warning(
                    "route %s %s of %s shadowed by %s",
                    route.http_method,
                    route.template.template,
                    route.operation_id,
                    seen[key].operation_id,
                )
                continue
            seen[key] = route
            self.routes.append(route)
            if route.template.literal is not None:
                self._literal[(route.http_method, route.template.literal)] = route
                self._literal_paths.add(route.template.literal)
            else:
                self._templated.setdefault(route.http_method, []).append(route)
        for bucket in self._templated.values():
            bucket.sort(key=lambda r: r.template.specificity)
        self.openapi_cache: bytes | None = None
        self.docs_openapi_cache: bytes | None = None

    def match(self, http_method: str, raw_path: str) -> Match | None:
        """The route for ``http_method`` and ``raw_path``, literal paths first."""
        route = self._literal.get((http_method, raw_path))
        if route is not None:
            return Match(route, {})
        if raw_path in self._literal_paths:
            # A path spelled out by some route (POST /api/documents/generate) is that
            # resource, for every method: a variable (/api/documents/{id}) does not take it.
            return None
        verb = self._verb_of(raw_path)
        for route in self._templated.get(http_method, ()):
            # A path ending in a known ":verb" belongs to that custom method only, not to a
            # plain variable that would happily swallow "id:verb" as the id.
            if verb is not None and route.template.verb != verb:
                continue
            values = route.template.match(raw_path)
            if values is not None:
                return Match(route, values)
        return None

    def _verb_of(self, raw_path: str) -> str | None:
        if not self._verbs:
            return None
        last = raw_path.rpartition("/")[2]
        name, colon, verb = last.rpartition(":")
        return verb if colon and name and verb in self._verbs else None

    def allowed_methods(self, raw_path: str) -> list[str]:
        """The methods some route serves at ``raw_path`` (for 405's Allow header)."""
        return sorted(m for m in HTTP_METHODS if self.match(m, raw_path) is not None)


def _has_etag(desc: descriptor.Descriptor | None) -> bool:
    """Whether ``desc`` is a message with a singular string field named ``etag``."""
    found = desc.fields_by_name.get(ETAG) if desc is not None else None
    return (
        found is not None
        and found.type == descriptor.FieldDescriptor.TYPE_STRING
        and not found.is_repeated
    )


def _reaches(desc: descriptor.Descriptor, targets: frozenset[str], seen: set[str]) -> bool:
    """Whether ``desc`` is, or contains at any depth, a message named in ``targets``."""
    if desc.full_name in targets:
        return True
    if desc.full_name in seen:
        return False
    seen.add(desc.full_name)
    return any(
        fd.message_type is not None and _reaches(fd.message_type, targets, seen)
        for fd in desc.fields
    )


def _read_enum_option(
    method: descriptor.MethodDescriptor,
    pool: descriptor_pool.DescriptorPool,
    options_class: type[message.Message] | None,
    name: str,
) -> int:
    """A scalar method option of our own, re-parsed with the pool's MethodOptions (DESIGN §9)."""
    if options_class is None:
        return 0
    try:
        extension = pool.FindExtensionByName(name)
    except KeyError:
        return 0
    options = options_class.FromString(method.GetOptions().SerializeToString())
    value: int = options.Extensions[extension]  # type: ignore[index]
    return value


def _pattern(rule: http_pb2.HttpRule) -> tuple[str, str] | None:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        return None
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), str(getattr(rule, kind))


def _update_mask_field(request: descriptor.Descriptor) -> str | None:
    """The request's FieldMask field: ``update_mask`` if present, else the only one."""
    masks = [
        f
        for f in request.fields
        if f.message_type is not None
        and f.message_type.full_name == FIELD_MASK
        and not f.is_repeated
    ]
    named = [f for f in masks if f.name == "update_mask"]
    if named:
        return named[0].name
    return masks[0].name if len(masks) == 1 else None


def _success_status(code: int, method: descriptor.MethodDescriptor) -> HTTPStatus:
    if code == 0:
        return HTTPStatus.OK
    try:
        status = HTTPStatus(code)
    except ValueError:
        status = HTTPStatus.OK
    if not 200 <= status < 300:
        log.warning("%s: http_success_code %d is not a 2xx; using 200", method.full_name, code)
        return HTTPStatus.OK
    return status


def _serializer(msg: message.Message) -> bytes:
    return msg.SerializeToString()


def build_routes(upstream: str, descriptors: Descriptors, channel: grpc.aio.Channel) -> list[Route]:
    """Every routable binding of the upstream's services; INTERNAL methods are left out."""
    pool = descriptor_pool.DescriptorPool()
    for serialized in descriptors.ordered_files():
        pool.AddSerializedFile(serialized)
    try:
        options_class: type[message.Message] | None = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.protobuf.MethodOptions")
        )
    except KeyError:
        options_class = None
    routes: list[Route] = []
    for service_name in descriptors.services:
        try:
            service = pool.FindServiceByName(service_name)
        except KeyError:
            log.warning("%s: service %s has no descriptor", upstream, service_name)
            continue
        for method in service.methods:
            routes.extend(_method_routes(upstream, pool, options_class, method, channel))
    return routes


def _method_routes(
    upstream: str,
    pool: descriptor_pool.DescriptorPool,
    options_class: type[message.Message] | None,
    method: descriptor.MethodDescriptor,
    channel: grpc.aio.Channel,
) -> list[Route]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    access = Access(_read_enum_option(method, pool, options_class, ACCESS_OPTION) or 0)
    if access in (Access.UNSPECIFIED, Access.INTERNAL):
        # Unspecified fails closed: it is internal, and internal methods are never routed.
        return []
    if method.client_streaming:
        log.warning("%s: client streaming is not served over REST", method.full_name)
        return []
    success = _success_status(
        _read_enum_option(method, pool, options_class, SUCCESS_CODE_OPTION), method
    )
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    full_method = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        call: Any = channel.unary_stream(
            full_method,
            request_serializer=_serializer,
            response_deserializer=response_class.FromString,
        )
    else:
        call = channel.unary_unary(
            full_method,
            request_serializer=_serializer,
            response_deserializer=response_class.FromString,
        )
    routes: list[Route] = []
    bindings: Sequence[http_pb2.HttpRule] = [rule, *rule.additional_bindings]
    for binding in bindings:
        pattern = _pattern(binding)
        if pattern is None:
            continue
        http_method, path = pattern
        try:
            template = parse_template(path)
        except TemplateError as error:
            log.warning("%s: bad path template %r: %s", method.full_name, path, error)
            continue
        problem = _check_binding(method, template, binding)
        if problem:
            log.warning(
                "%s: binding %s %s skipped: %s", method.full_name, http_method, path, problem
            )
            continue
        routes.append(
            Route(
                http_method=http_method,
                template=template,
                upstream=upstream,
                service=method.containing_service.full_name,
                method=method,
                pool=pool,
                request_class=request_class,
                response_class=response_class,
                body=binding.body,
                response_body=binding.response_body,
                access=access,
                success=success,
                server_streaming=method.server_streaming,
                call=call,
                update_mask_field=_update_mask_field(method.input_type)
                if http_method == "PATCH" and binding.body not in ("", "*")
                else None,
            )
        )
    return routes


def _check_binding(
    method: descriptor.MethodDescriptor, template: PathTemplate, binding: http_pb2.HttpRule
) -> str | None:
    """Why a binding cannot be served, or None when it can."""
    for variable in template.variables:
        message_type: descriptor.Descriptor | None = method.input_type
        for index, name in enumerate(variable.field_path):
            found = message_type.fields_by_name.get(name) if message_type else None
            if found is None or found.is_repeated:
                return f"path field {variable.name} is not a singular field of the request"
            last = index == len(variable.field_path) - 1
            if last and found.message_type is not None:
                return f"path field {variable.name} is a message"
            message_type = found.message_type
    if binding.body not in ("", "*") and binding.body not in method.input_type.fields_by_name:
        return f"body field {binding.body} is not in the request"
    if binding.response_body and binding.response_body not in method.output_type.fields_by_name:
        return f"response_body field {binding.response_body} is not in the response"
    return None
