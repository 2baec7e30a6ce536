"""What auth costs: GetMe with the revocation check vs without, and sign-in/refresh latency.

The two user service processes share one database, secrets and token; only one of them
has FOLIO_REDIS_URL, so only it checks revoked sessions. They are measured in alternating
rounds at the same concurrency, in one run.
"""

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import uvloop

from folio.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from folio.user.v1 import user_service_pb2, user_service_pb2_grpc
from libs.config import Settings
from libs.devstack import backing_services, migration_targets
from libs.migrations import migrate_all
from tests.fixtures.google_issuer import GoogleIssuer, start_issuer
from tests.fixtures.stack import Stack

CONCURRENCY = 16
MEASURE_SECONDS = 3.0
ROUNDS = 2
SEQUENTIAL_CALLS = 200


async def hammer(address: str, token: str) -> tuple[float, list[float]]:
    """Requests per second and latencies of GetMe at CONCURRENCY for MEASURE_SECONDS."""
    latencies: list[float] = []
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = user_service_pb2_grpc.UserServiceStub(channel)
        await stub.GetMe(user_service_pb2.GetMeRequest(), metadata=metadata)
        deadline = time.perf_counter() + MEASURE_SECONDS

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await stub.GetMe(user_service_pb2.GetMeRequest(), metadata=metadata)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return len(latencies) / (time.perf_counter() - started), latencies


async def sequential_auth(address: str, issuer: GoogleIssuer) -> tuple[list[float], list[float]]:
    """Latencies of SignInWithGoogle and of RefreshToken, one call at a time."""
    sign_ins: list[float] = []
    refreshes: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        refresh_token = ""
        for index in range(SEQUENTIAL_CALLS):
            started = time.perf_counter()
            reply = await stub.SignInWithGoogle(
                auth_service_pb2.SignInWithGoogleRequest(
                    id_token=issuer.id_token(f"bench-{index}")
                ),
                metadata=(("x-forwarded-for", f"10.9.{index // 250}.{index % 250}"),),
            )
            sign_ins.append(time.perf_counter() - started)
            refresh_token = reply.refresh_token
        for _ in range(SEQUENTIAL_CALLS):
            started = time.perf_counter()
            rotated = await stub.RefreshToken(
                auth_service_pb2.RefreshTokenRequest(refresh_token=refresh_token)
            )
            refreshes.append(time.perf_counter() - started)
            refresh_token = rotated.refresh_token
    return sign_ins, refreshes


def ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1000


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="folio-bench-auth-"))
    issuer = GoogleIssuer()
    server = start_issuer(issuer)
    limits = {
        "FOLIO_RATE_LIMIT_SIGNIN_PER_IP": "100000",
        "FOLIO_RATE_LIMIT_REFRESH_PER_IP": "100000",
        "FOLIO_RATE_LIMIT_REFRESH_PER_SUBJECT": "100000",
    }
    try:
        with backing_services(Settings(data_dir=workdir / "engines")) as urls:
            database_url, redis_url = urls["FOLIO_DATABASE_URL"], urls["FOLIO_REDIS_URL"]
            migrate_all(database_url, migration_targets())
            checked = Stack(workdir, database_url, redis_url, {**issuer.service_env(), **limits})
            unchecked = Stack(workdir, database_url, redis_url)
            del unchecked.env["FOLIO_REDIS_URL"]
            try:
                checked.start_service("user")
                checked.start_service("auth")
                unchecked.start_service("user")
                token = checked.mint_token("bench-auth@example.com")
                with_check: list[tuple[float, list[float]]] = []
                without: list[tuple[float, list[float]]] = []
                for _ in range(ROUNDS):
                    with_check.append(uvloop.run(hammer(checked.address("user"), token)))
                    without.append(uvloop.run(hammer(unchecked.address("user"), token)))
                sign_ins, refreshes = uvloop.run(sequential_auth(checked.address("auth"), issuer))
            finally:
                checked.stop()
                unchecked.stop()
    finally:
        server.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    rps_with = statistics.mean(r for r, _ in with_check)
    rps_without = statistics.mean(r for r, _ in without)
    lat_with = [x for _, lats in with_check for x in lats]
    lat_without = [x for _, lats in without for x in lats]
    print(f"GetMe, concurrency {CONCURRENCY}, {ROUNDS} alternating rounds of {MEASURE_SECONDS} s")
    print(
        f"  with revocation check:    {rps_with:7.0f} req/s"
        f"  p50 {ms(lat_with, 0.5):.2f} ms  p99 {ms(lat_with, 0.99):.2f} ms"
    )
    print(
        f"  without revocation check: {rps_without:7.0f} req/s"
        f"  p50 {ms(lat_without, 0.5):.2f} ms  p99 {ms(lat_without, 0.99):.2f} ms"
    )
    print(
        f"  ratio with/without: throughput {rps_with / rps_without:.2f}x,"
        f" p50 latency {ms(lat_with, 0.5) / ms(lat_without, 0.5):.2f}x"
    )
    print(
        f"SignInWithGoogle (cached certs, user upsert, session insert), sequential:"
        f" p50 {ms(sign_ins, 0.5):.2f} ms  p99 {ms(sign_ins, 0.99):.2f} ms"
    )
    print(
        f"RefreshToken (lookup, rate limits, conditional UPDATE, sign), sequential:"
        f" p50 {ms(refreshes, 0.5):.2f} ms  p99 {ms(refreshes, 0.99):.2f} ms"
    )
    print(f"Google certs fetched: {issuer.certs_fetches} time(s) for {SEQUENTIAL_CALLS} sign-ins")


if __name__ == "__main__":
    main()
