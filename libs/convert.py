"""Conversions between Python values and protobuf well-known types, used by every servicer."""

import datetime as dt
from collections.abc import Mapping
from typing import Any, overload

from google.protobuf import json_format, struct_pb2, timestamp_pb2


@overload
def timestamp(value: dt.datetime | int) -> timestamp_pb2.Timestamp: ...
@overload
def timestamp(value: None) -> None: ...
def timestamp(value: dt.datetime | int | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp from an aware datetime or epoch seconds; None stays unset."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    if isinstance(value, int):
        stamp.FromSeconds(value)
    else:
        stamp.FromDatetime(value)
    return stamp


@overload
def struct(value: Mapping[str, Any]) -> struct_pb2.Struct: ...
@overload
def struct(value: None) -> None: ...
def struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """A Struct from a JSON object; None stays unset."""
    if value is None:
        return None
    message = struct_pb2.Struct()
    message.update(value)
    return message


def to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as the JSON object it carries."""
    value: dict[str, Any] = json_format.MessageToDict(message)
    return value
