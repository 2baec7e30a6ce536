"""The task runtime's rules: limits, retries, result dicts, transient faults, log prefixes."""

import logging

import grpc
import pytest

from libs.config import Settings
from libs.service import purge_targets
from libs.tasks import TransientError, task
from libs.tasks.app import TimeLimits, celery_config
from libs.tasks.author import REGISTRY, TaskLogFilter, task_id_var
from libs.tasks.outcome import envelope, is_transient, retry_delay


def settings(**overrides: object) -> Settings:
    return Settings(redis_url="redis://127.0.0.1:6379/0", **overrides)  # type: ignore[arg-type]


def test_time_limits_are_ordered_below_the_visibility_timeout() -> None:
    limits = TimeLimits.for_task(60, settings())
    assert limits.task < limits.soft < limits.hard
    limits.check(3600)
    with pytest.raises(ValueError, match="visibility timeout"):
        limits.check(limits.hard)


def test_celery_is_configured_for_tasks_that_must_not_be_lost() -> None:
    config = celery_config(settings(task_time_limit_seconds=120))
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1 and config["worker_disable_prefetch"]
    assert config["worker_cancel_long_running_tasks_on_connection_loss"]
    visibility = config["broker_transport_options"]["visibility_timeout"]
    assert 120 < config["task_soft_time_limit"] < config["task_time_limit"] < visibility
    assert config["result_backend_transport_options"]["visibility_timeout"] == visibility
    assert config["task_ignore_result"] and config["result_backend"] is None


def test_celery_refuses_limits_a_redelivery_could_overtake() -> None:
    with pytest.raises(ValueError):
        celery_config(
            settings(task_time_limit_seconds=3590, broker_visibility_timeout_seconds=3600)
        )


def test_celery_over_an_embedded_redis_uses_its_socket() -> None:
    config = celery_config(Settings(redis_url="unix:///tmp/r.sock?db=3"))
    assert config["broker_url"] == "redis+socket:///tmp/r.sock?virtual_host=3"


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 30])
def test_retry_delays_grow_with_jitter_up_to_the_cap(attempt: int) -> None:
    step = min(60.0, 2.0 * 2 ** (attempt - 1))
    delays = {retry_delay(attempt, 2.0, 60.0) for _ in range(50)}
    assert all(step / 2 <= delay <= step for delay in delays)
    assert len(delays) > 1


def test_a_result_is_wrapped_unless_it_is_already_the_result_dict() -> None:
    assert envelope({"pages": 3}) == {"success": True, "result": {"pages": 3}}
    assert envelope(None) == {"success": True, "result": None}
    failure = {"success": False, "error": "no such document"}
    assert envelope(failure) == failure
    # A dict that merely has a "success" key among others is a result, not the envelope.
    assert envelope({"success": True, "pages": 3}) == {
        "success": True,
        "result": {"success": True, "pages": 3},
    }


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "details", "")


def test_only_transient_faults_are_retried() -> None:
    assert is_transient(TransientError("peer down"))
    assert is_transient(ConnectionResetError())
    assert is_transient(_rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert is_transient(_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert not is_transient(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT))
    assert not is_transient(_rpc_error(grpc.StatusCode.PERMISSION_DENIED))
    assert not is_transient(ValueError("bad input"))
    assert not is_transient(KeyError("missing"))


def test_task_logs_carry_the_task_id_prefix() -> None:
    record = logging.LogRecord("folio.tasks", logging.INFO, __file__, 1, "purged %d", (3,), None)
    token = task_id_var.set("01JAAAAAAAAAAAAAAAAAAAAAAA")
    try:
        assert TaskLogFilter().filter(record)
    finally:
        task_id_var.reset(token)
    assert record.getMessage() == "[01JAAAAAAAAAAAAAAAAAAAAAAA] purged 3"
    outside = logging.LogRecord("folio.tasks", logging.INFO, __file__, 1, "idle", (), None)
    TaskLogFilter().filter(outside)
    assert outside.getMessage() == "idle"


def test_task_kinds_are_namespaced_and_unique() -> None:
    async def work(_ctx: object) -> None:
        return None

    with pytest.raises(ValueError, match="<domain>.<name>"):
        task("nodomain")(work)
    task("unit.once")(work)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            task("unit.once")(lambda _ctx: work(_ctx))
    finally:
        REGISTRY.pop("unit.once")


def test_account_deletion_purges_auth_first_and_the_user_row_last() -> None:
    assert [service.name for service in purge_targets()] == [
        "auth",
        "document",
        "llm",
        "task",
        "user",
    ]
