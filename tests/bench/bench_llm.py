"""What Folio adds to a Claude stream: time to first token, and tokens relayed per second.

The same local Messages API server, a process of its own, answers both sides in one run:
the anthropic SDK calling it directly, and a REST client streaming through the gateway
and the LLM service (which call it with the same SDK). It echoes the prompt, so a prompt
of N words is an answer of about N tokens. Rounds alternate, so both see the same machine.
"""

import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anthropic
import httpx
import uvloop

from libs.config import Settings
from libs.devstack import backing_services, migration_targets
from libs.migrations import migrate_all
from tests.fixtures.anthropic_server import API_KEY
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.stack import Stack

MODEL = "claude-sonnet-4-5"
FIRST_TOKEN_CALLS = 60
STREAMS = 50
WORDS = 200
ROUNDS = 2
SHORT = "hi"
LONG = " ".join(f"w{i}" for i in range(WORDS))


class Upstream:
    """``python -m tests.fixtures.anthropic_server`` on a free port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = API_KEY
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fixtures.anthropic_server", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, 30, "the local Messages API server")

    def _up(self) -> bool:
        try:
            httpx.get(self.base_url, timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def env(self) -> dict[str, str]:
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": self.api_key}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def direct_first_token(server: Upstream) -> list[float]:
    client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=server.api_key)
    latencies = []
    try:
        for _ in range(FIRST_TOKEN_CALLS):
            started = time.perf_counter()
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": SHORT}]
            ) as stream:
                async for _text in stream.text_stream:
                    latencies.append(time.perf_counter() - started)
                    break
    finally:
        await client.close()
    return latencies


async def gateway_stream(
    http: httpx.AsyncClient, url: str, token: str, *, first_only: bool
) -> tuple[float, int]:
    """Seconds to the first delta event (or to the end), and deltas read."""
    started = time.perf_counter()
    deltas = 0
    first = 0.0
    async with http.stream(
        "POST",
        f"{url}/api/llm/stream",
        json={"messages": [{"role": "user", "content": LONG if not first_only else SHORT}]},
        headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
    ) as response:
        async for line in response.aiter_lines():
            if line == "event: delta":
                deltas += 1
                if deltas == 1:
                    first = time.perf_counter() - started
                    if first_only:
                        break
    return first, deltas


async def gateway_first_token(url: str, token: str) -> list[float]:
    async with httpx.AsyncClient(timeout=30) as http:
        return [
            (await gateway_stream(http, url, token, first_only=True))[0]
            for _ in range(FIRST_TOKEN_CALLS)
        ]


async def direct_throughput(server: Upstream) -> float:
    client = anthropic.AsyncAnthropic(base_url=server.base_url, api_key=server.api_key)

    async def one() -> int:
        count = 0
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": LONG}]
        ) as stream:
            async for _text in stream.text_stream:
                count += 1
        return count

    try:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(STREAMS)))
        return sum(counts) / (time.perf_counter() - started)
    finally:
        await client.close()


async def gateway_throughput(url: str, token: str) -> float:
    limits = httpx.Limits(max_connections=STREAMS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(gateway_stream(http, url, token, first_only=False) for _ in range(STREAMS))
        )
        return sum(deltas for _, deltas in results) / (time.perf_counter() - started)


def ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1000


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="folio-bench-llm-"))
    server = Upstream()
    try:
        with backing_services(Settings(data_dir=workdir / "engines")) as urls:
            migrate_all(urls["FOLIO_DATABASE_URL"], migration_targets())
            env = {
                **urls,
                **server.env(),
                "FOLIO_LLM_PROVIDER": "anthropic",
                "FOLIO_LLM_BUDGET_TOKENS_PREMIUM": str(10**9),
            }
            stack = Stack(workdir, urls["FOLIO_DATABASE_URL"], urls["FOLIO_REDIS_URL"], env)
            # Only what a stream crosses runs, and the gateway serves just those.
            stack.env["FOLIO_GATEWAY_UPSTREAMS"] = '["user", "llm"]'
            try:
                for service in ("user", "llm", "gateway"):
                    stack.start_service(service)
                token = stack.mint_token("bench-llm@example.com", premium=True)
                url = stack.gateway_url
                uvloop.run(gateway_first_token(url, token))  # warm-up
                direct: list[float] = []
                through: list[float] = []
                direct_rates: list[float] = []
                through_rates: list[float] = []
                for _ in range(ROUNDS):
                    direct += uvloop.run(direct_first_token(server))
                    through += uvloop.run(gateway_first_token(url, token))
                    direct_rates.append(uvloop.run(direct_throughput(server)))
                    through_rates.append(uvloop.run(gateway_throughput(url, token)))
            finally:
                stack.stop()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Time to first token, {ROUNDS * FIRST_TOKEN_CALLS} streams one at a time")
    for label, values in (("SDK -> upstream directly", direct), ("REST -> Folio", through)):
        print(f"  {label:<26} p50 {ms(values, 0.5):6.2f} ms  p99 {ms(values, 0.99):6.2f} ms")
    print(f"  added at p50: {ms(through, 0.5) - ms(direct, 0.5):.2f} ms (target <= 5 ms)")
    direct_rate, through_rate = statistics.mean(direct_rates), statistics.mean(through_rates)
    print(f"Streaming throughput, {STREAMS} concurrent streams of {WORDS} tokens")
    print(f"  SDK directly:  {direct_rate:8.0f} tokens/s")
    print(f"  through Folio: {through_rate:8.0f} tokens/s ({through_rate / direct_rate:.2f}x)")


if __name__ == "__main__":
    main()
