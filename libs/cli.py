"""The ``folio`` command: dev stack, single services, migrations and dev tokens."""

import argparse
import asyncio
import faulthandler
import importlib
import sys

from libs.config import SERVICE_PORTS, Settings, get_settings
from libs.logs import configure_logging


def _dev(settings: Settings, _: argparse.Namespace) -> int:
    import os

    from libs.devstack import run_dev
    from services.auth.google import DEV_GOOGLE_CLIENT_ID

    # The auth service refuses to start without a Google client id; dev gets a
    # placeholder (sign in with `folio token mint` instead, or set your own).
    os.environ.setdefault("FOLIO_GOOGLE_CLIENT_IDS", DEV_GOOGLE_CLIENT_ID)
    return run_dev(settings)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    configure_logging(args.service, settings.log_level)
    module = importlib.import_module(f"services.{args.service}.server")
    asyncio.run(module.serve(settings))
    return 0


def _gateway(settings: Settings, _: argparse.Namespace) -> int:
    configure_logging("gateway", settings.log_level)
    from gateway.server import run

    run(settings)
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from libs.worker import run_worker

    return run_worker(settings, concurrency=args.concurrency)


def _migrate(settings: Settings, _: argparse.Namespace) -> int:
    from libs.devstack import dev_database_url, migration_targets
    from libs.migrations import migrate_all

    configure_logging("migrate", settings.log_level)
    url = dev_database_url(settings)
    if url is None:
        print("set FOLIO_DATABASE_URL (or start `folio dev`)", file=sys.stderr)
        return 2
    for schema, files in migrate_all(url, migration_targets()).items():
        print(f"{schema}: applied {len(files)} migration(s)")
    return 0


def _mint(settings: Settings, args: argparse.Namespace) -> int:
    from libs.devstack import dev_database_url
    from services.user.dev_tokens import mint_dev_token

    if settings.is_production:
        print("token minting is for development only", file=sys.stderr)
        return 2
    url = dev_database_url(settings)
    if url is None:
        print("start `folio dev` first, or set FOLIO_DATABASE_URL", file=sys.stderr)
        return 2
    token = asyncio.run(
        mint_dev_token(settings, url, email=args.email, premium=args.premium, admin=args.admin)
    )
    print(token)
    return 0


def _rotate_keys(settings: Settings, _: argparse.Namespace) -> int:
    import time

    from libs.secrets import SecretsError
    from services.auth.keys import rotate_signing_keys

    try:
        rotation = rotate_signing_keys(settings)
    except SecretsError as error:
        print(error, file=sys.stderr)
        return 2
    signs_from = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rotation.signs_from))
    print(
        f"added signing key {rotation.new_kid}: published in the JWKS now, signs from {signs_from}"
    )
    print(f"signing now with {rotation.signing_kid}")
    for kid in rotation.removed_kids:
        print(f"removed retired key {kid}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="folio", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("dev", help="start everything on embedded defaults").set_defaults(run=_dev)
    serve = commands.add_parser("serve", help="run one gRPC service")
    serve.add_argument("service", choices=sorted(SERVICE_PORTS))
    serve.set_defaults(run=_serve)
    commands.add_parser("gateway", help="run the REST gateway").set_defaults(run=_gateway)
    worker = commands.add_parser("worker", help="run the Celery worker pool for every task")
    worker.add_argument(
        "--concurrency", type=int, help="worker processes (FOLIO_WORKER_CONCURRENCY)"
    )
    worker.set_defaults(run=_worker)
    commands.add_parser("migrate", help="apply every service's migrations").set_defaults(
        run=_migrate
    )
    token = commands.add_parser("token", help="access tokens").add_subparsers(
        dest="token_command", required=True
    )
    mint = token.add_parser("mint", help="(dev only) create the user if needed, print a token")
    mint.add_argument("--email", required=True)
    mint.add_argument("--premium", action="store_true")
    mint.add_argument("--admin", action="store_true")
    mint.set_defaults(run=_mint)
    keys = commands.add_parser("keys", help="access-token signing keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser(
        "rotate", help="add a signing key; it signs once verifiers have had time to fetch it"
    ).set_defaults(run=_rotate_keys)
    return root


def main(argv: list[str] | None = None) -> None:
    faulthandler.enable()
    args = parser().parse_args(argv)
    sys.exit(args.run(get_settings(), args))


if __name__ == "__main__":
    main()
