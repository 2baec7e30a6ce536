"""OUTPUT_ONLY fields (AIP-203) refused in requests, read from the generated descriptors."""

import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from folio.auth.v1 import auth_service_pb2, session_pb2
from folio.task.v1 import task_service_pb2
from folio.user.v1 import user_pb2, user_service_pb2
from libs.errors import InvalidArgument
from libs.interceptors.field_behavior import (
    check_output_only,
    is_output_only,
    output_only_violations,
)


def update_me(user: user_pb2.User, *paths: str) -> user_service_pb2.UpdateMeRequest:
    mask = field_mask_pb2.FieldMask(paths=paths) if paths else None
    return user_service_pb2.UpdateMeRequest(user=user, update_mask=mask)


def test_the_protos_mark_what_only_the_server_sets() -> None:
    fields = user_pb2.User.DESCRIPTOR.fields_by_name
    assert {name for name, fd in fields.items() if is_output_only(fd)} == {
        "id",
        "email",
        "is_premium",
        "is_admin",
        "created_at",
        "updated_at",
    }


def test_writable_fields_pass() -> None:
    request = update_me(user_pb2.User(display_name="Ada", picture_url="https://p/a.png"))
    assert output_only_violations(request) == {}
    masked = update_me(user_pb2.User(display_name="Ada"), "display_name")
    assert output_only_violations(masked) == {}


def test_each_output_only_value_is_named_by_its_path() -> None:
    request = update_me(
        user_pb2.User(
            display_name="Ada",
            email="x@y",
            is_admin=True,
            created_at=timestamp_pb2.Timestamp(seconds=1),
        )
    )
    violations = output_only_violations(request)
    assert set(violations) == {"user.email", "user.is_admin", "user.created_at"}
    assert all("output only" in text for text in violations.values())


def test_a_default_value_is_not_a_value() -> None:
    # proto3 cannot tell is_admin=false from unset: there is nothing to refuse.
    assert output_only_violations(update_me(user_pb2.User(is_admin=False))) == {}


def test_mask_paths_naming_output_only_fields_are_refused() -> None:
    violations = output_only_violations(update_me(user_pb2.User(), "display_name", "is_premium"))
    assert list(violations) == ["update_mask.is_premium"]
    nested = output_only_violations(update_me(user_pb2.User(), "created_at.seconds"))
    assert list(nested) == ["update_mask.created_at.seconds"]
    # Paths that are not fields at all are the servicer's to refuse, in its own words.
    assert output_only_violations(update_me(user_pb2.User(), "nickname", "*")) == {}


def test_a_field_both_set_and_masked_is_reported_once_on_the_mask() -> None:
    violations = output_only_violations(update_me(user_pb2.User(email="x@y"), "email"))
    assert list(violations) == ["update_mask.email"]
    mixed = output_only_violations(update_me(user_pb2.User(email="x@y", id="u"), "email"))
    assert set(mixed) == {"update_mask.email", "user.id"}


def test_repeated_messages_are_searched_by_index() -> None:
    # Any message works; a response type is simply the one with a repeated resource.
    message = auth_service_pb2.ListSessionsResponse(
        sessions=[session_pb2.Session(), session_pb2.Session(id="s", current=True)]
    )
    assert set(output_only_violations(message)) == {"sessions[1].id", "sessions[1].current"}


def test_requests_without_resources_are_not_walked() -> None:
    request = task_service_pb2.EnqueueTaskRequest(kind="user.delete", idempotency_key="k")
    assert output_only_violations(request) == {}


def test_the_check_names_each_output_only_path_and_passes_writable_requests() -> None:
    bad = update_me(user_pb2.User(email="x@y"))
    with pytest.raises(InvalidArgument) as caught:
        check_output_only(bad)
    assert caught.value.field_violations == {
        "user.email": "output only: the server sets this field, a request may not"
    }
    check_output_only(update_me(user_pb2.User(display_name="Ada")))
    check_output_only(user_service_pb2.GetMeRequest())


def test_a_masked_sub_field_covers_its_set_parent() -> None:
    request = update_me(
        user_pb2.User(created_at=timestamp_pb2.Timestamp(seconds=1)), "created_at.seconds"
    )
    assert list(output_only_violations(request)) == ["update_mask.created_at.seconds"]
