"""The e2e stack fixture itself: services answer, and one can be restarted alone."""

import grpc
import pytest

from folio.user.v1 import user_service_pb2, user_service_pb2_grpc
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.e2e


def get_me(stack: Stack, token: str) -> user_service_pb2.GetMeResponse:
    with grpc.insecure_channel(stack.address("user")) as channel:
        response: user_service_pb2.GetMeResponse = user_service_pb2_grpc.UserServiceStub(
            channel
        ).GetMe(
            user_service_pb2.GetMeRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
        return response


def test_a_restarted_service_serves_the_same_user(stack: Stack) -> None:
    token = stack.mint_token("restart@example.com")
    assert get_me(stack, token).user.email == "restart@example.com"
    stack.stop_service("user")
    stack.start_service("user")
    assert get_me(stack, token).user.email == "restart@example.com"
