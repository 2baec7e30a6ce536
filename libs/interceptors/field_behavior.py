"""Refuses requests that set fields the API declares OUTPUT_ONLY (AIP-203 field behaviour).

The proto is the single statement of what is writable: servicers never re-check it, and
the gateway's OpenAPI shows the same fields as read-only.
"""

from dataclasses import dataclass
from functools import cache
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor, message

from libs.errors import InvalidArgument

OUTPUT_ONLY_HINT = "output only: the server sets this field, a request may not"
FIELD_MASK = "google.protobuf.FieldMask"
WKT_PREFIX = "google.protobuf."


def is_output_only(field: descriptor.FieldDescriptor) -> bool:
    """Whether ``field`` carries ``(google.api.field_behavior) = OUTPUT_ONLY``."""
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.OUTPUT_ONLY in behaviors


@dataclass(frozen=True)
class _Mask:
    """AIP-134: an update's FieldMask field, and the resource field its paths start in."""

    field: str
    resource_field: str
    resource: descriptor.Descriptor


@dataclass(frozen=True)
class _Plan:
    """What to look at in one message type, worked out once per type."""

    output_only: frozenset[str]
    # Message fields whose type holds OUTPUT_ONLY fields at some depth.
    nested: frozenset[str]
    mask: _Mask | None

    @property
    def idle(self) -> bool:
        return not (self.output_only or self.nested or self.mask)


@cache
def _plan(desc: descriptor.Descriptor) -> _Plan:
    output_only = frozenset(f.name for f in desc.fields if is_output_only(f))
    nested = frozenset(
        f.name
        for f in desc.fields
        if f.name not in output_only and f.message_type is not None and _reaches(f.message_type)
    )
    return _Plan(output_only=output_only, nested=nested, mask=_mask(desc))


def _mask(desc: descriptor.Descriptor) -> _Mask | None:
    """The update mask of ``desc`` when its paths could name an OUTPUT_ONLY field."""
    masks = [f for f in desc.fields if _is_message(f, FIELD_MASK) and not f.is_repeated]
    # ``update_mask`` when there is one, else the only FieldMask.
    mask = next((f for f in masks if f.name == "update_mask"), None)
    if mask is None and len(masks) == 1:
        mask = masks[0]
    if mask is None:
        return None
    # The resource is the one other message field (well-known types aside), as in
    # UpdateDocumentRequest {document_id, document, update_mask}.
    fields = [
        f
        for f in desc.fields
        if f is not mask
        and f.message_type is not None
        and not f.message_type.full_name.startswith(WKT_PREFIX)
        and not f.is_repeated
    ]
    resource = fields[0].message_type if len(fields) == 1 else None
    if resource is None or not _reaches(resource):
        return None
    return _Mask(field=mask.name, resource_field=fields[0].name, resource=resource)


def _is_message(field: descriptor.FieldDescriptor, full_name: str) -> bool:
    return field.message_type is not None and field.message_type.full_name == full_name


def _reaches(desc: descriptor.Descriptor) -> bool:
    """Whether ``desc`` has an OUTPUT_ONLY field at any depth (well-known types have none)."""
    return _reaches_from(desc, frozenset())


@cache
def _reaches_from(desc: descriptor.Descriptor, seen: frozenset[str]) -> bool:
    if desc.full_name.startswith(WKT_PREFIX) or desc.full_name in seen:
        return False
    inside = seen | {desc.full_name}
    return any(
        is_output_only(f) or (f.message_type is not None and _reaches_from(f.message_type, inside))
        for f in desc.fields
    )


def output_only_violations(request: message.Message) -> dict[str, str]:
    """Field path -> why, for every OUTPUT_ONLY field ``request`` sets or its mask names."""
    plan = _plan(request.DESCRIPTOR)
    if plan.idle:
        return {}
    violations: dict[str, str] = {}
    named: set[str] = set()
    mask = plan.mask
    if mask is not None:
        for path in getattr(request, mask.field).paths:
            if _mask_path_output_only(mask.resource, path):
                violations[f"{mask.field}.{path}"] = OUTPUT_ONLY_HINT
                named.add(f"{mask.resource_field}.{path}")
    values: dict[str, str] = {}
    _collect(request, "", plan, values)
    # The mask is what asks for the write, so a field it names is reported there, once.
    for path, why in values.items():
        if not any(_overlap(path, other) for other in named):
            violations[path] = why
    return violations


def _overlap(a: str, b: str) -> bool:
    """Whether field paths ``a`` and ``b`` are one field or one lies inside the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _mask_path_output_only(resource: descriptor.Descriptor, path: str) -> bool:
    """Whether the mask ``path`` (relative to the resource) names or enters an OUTPUT_ONLY field."""
    desc: descriptor.Descriptor | None = resource
    for name in path.split("."):
        field = desc.fields_by_name.get(name) if desc is not None else None
        if field is None:
            return False  # not a field: the servicer says so in its own words
        if is_output_only(field):
            return True
        desc = field.message_type
    return False


def _collect(msg: message.Message, prefix: str, plan: _Plan, out: dict[str, str]) -> None:
    for field, value in msg.ListFields():
        path = prefix + field.name
        if field.name in plan.output_only:
            out[path] = OUTPUT_ONLY_HINT
        elif field.name in plan.nested:
            for where, item in _messages(path, field, value):
                _collect(item, where + ".", _plan(item.DESCRIPTOR), out)


def _messages(
    path: str, field: descriptor.FieldDescriptor, value: Any
) -> list[tuple[str, message.Message]]:
    """The messages a set field holds, each with its path (``a[0]``, ``m[key]``, ``b``)."""
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        return [
            (f"{path}[{key}]", item)
            for key, item in value.items()
            if isinstance(item, message.Message)
        ]
    if field.is_repeated:
        return [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    return [(path, value)]


def check_output_only(request: message.Message) -> None:
    """INVALID_ARGUMENT, with a field violation per path, when ``request`` sets OUTPUT_ONLY."""
    violations = output_only_violations(request)
    if violations:
        raise InvalidArgument("request sets output-only fields", field_violations=violations)
