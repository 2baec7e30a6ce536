"""Upstream services: one channel each, descriptors kept fresh, one shared route table."""

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import GatewaySettings
from gateway.reflection import Descriptors, fetch_descriptors
from gateway.routes import Route, RouteTable, build_routes

log = logging.getLogger(__name__)

REFLECTION_TIMEOUT = 5.0
# Reconnect quickly after an upstream restarts: the default backoff grows to two minutes,
# and every call made meanwhile would fail with 503.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 30_000),
]


@dataclass(eq=False)
class Upstream:
    """One service the gateway forwards to, and what it last said it serves."""

    name: str
    address: str
    channel: grpc.aio.Channel
    descriptors: Descriptors | None = None
    routes: list[Route] = field(default_factory=list)
    reachable: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Upstreams:
    """Discovers every upstream's routes through reflection and keeps them current."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.upstreams: dict[str, Upstream] = {}
        self.table = RouteTable()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the channels, wait briefly for first descriptors, keep polling in the background."""
        for name in dict.fromkeys(self.settings.gateway_upstreams):
            address = self.settings.upstream_address(name)
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self.upstreams[name] = Upstream(name, address, channel)
        first = {u.name: asyncio.ensure_future(self.refresh(u)) for u in self.upstreams.values()}
        if first:
            # An upstream that starts after the gateway is picked up by the poll loop.
            await asyncio.wait(first.values(), timeout=self.settings.gateway_startup_wait_seconds)
        for upstream in self.upstreams.values():
            self._tasks.append(asyncio.create_task(self._poll(upstream, first[upstream.name])))
            self._tasks.append(asyncio.create_task(self._watch_connectivity(upstream)))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for upstream in self.upstreams.values():
            await upstream.channel.close(None)

    def request_refresh(self, name: str) -> None:
        """Re-read ``name``'s descriptors now (e.g. it answered UNIMPLEMENTED)."""
        upstream = self.upstreams.get(name)
        if upstream is not None:
            upstream.wake.set()

    async def refresh(self, upstream: Upstream) -> bool:
        """Re-read one upstream's descriptors; swap the table if they changed."""
        try:
            descriptors = await fetch_descriptors(upstream.channel, deadline=REFLECTION_TIMEOUT)
        except Exception as error:  # unreachable or misbehaving: keep the last-known routes
            if upstream.reachable or upstream.descriptors is None:
                log.info(
                    "upstream %s at %s not reachable: %s",
                    upstream.name,
                    upstream.address,
                    _describe(error),
                )
            upstream.reachable = False
            return False
        upstream.reachable = True
        if upstream.descriptors is not None and descriptors.digest == upstream.descriptors.digest:
            return False
        try:
            routes = build_routes(upstream.name, descriptors, upstream.channel)
        except Exception:
            log.exception("cannot build routes of %s; keeping the previous ones", upstream.name)
            return False
        upstream.descriptors = descriptors
        upstream.routes = routes
        self._rebuild()
        log.info(
            "routes of %s loaded",
            upstream.name,
            extra={
                "upstream": upstream.name,
                "services": list(descriptors.services),
                "routes": len(routes),
            },
        )
        return True

    def _rebuild(self) -> None:
        # Built aside and swapped in one assignment: a request sees the old table or the new.
        self.table = RouteTable(r for u in self.upstreams.values() for r in u.routes)

    async def _poll(self, upstream: Upstream, first: "asyncio.Future[bool]") -> None:
        # Never two reads of one upstream at once: the first one finishes before polling.
        await asyncio.wait((first,))
        interval = self.settings.gateway_reflection_poll_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(upstream.wake.wait(), timeout=interval)
            upstream.wake.clear()
            await self.refresh(upstream)

    async def _watch_connectivity(self, upstream: Upstream) -> None:
        """Wake the poller whenever the channel (re)connects: a restart may bring new RPCs.

        A dropped connection leaves the channel IDLE until something dials; asking for the
        state with ``try_to_connect`` dials at once, so a restarted upstream is re-read
        within the reconnect backoff rather than at the next poll.
        """
        channel = upstream.channel
        state = channel.get_state(try_to_connect=True)
        while True:
            await channel.wait_for_state_change(state)
            new_state = channel.get_state(try_to_connect=True)
            if new_state == grpc.ChannelConnectivity.READY and state != new_state:
                upstream.wake.set()
            state = new_state

    async def health(self) -> dict[str, str]:
        """Each upstream's gRPC health status name (UNREACHABLE when it cannot be asked)."""

        async def check(upstream: Upstream) -> str:
            stub = health_pb2_grpc.HealthStub(upstream.channel)
            try:
                answer = await stub.Check(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=self.settings.gateway_health_timeout_seconds,
                )
            except grpc.aio.AioRpcError as error:
                return (
                    "UNREACHABLE"
                    if error.code() == grpc.StatusCode.UNAVAILABLE
                    else error.code().name
                )
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

        names = list(self.upstreams)
        results = await asyncio.gather(*(check(self.upstreams[n]) for n in names))
        return dict(zip(names, results, strict=True))


def _describe(error: Exception) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"
