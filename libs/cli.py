"""The ``folio`` command: dev stack, single services, the worker and migrations.

Commands that belong to a domain or to the gateway (``folio gateway``, ``folio token``,
``folio keys``) are plugins (``libs.commands``). Services come from the
``folio.services`` registry (``libs.service``).
"""

import argparse
import asyncio
import faulthandler
import sys

from libs.commands import registered_commands
from libs.config import Settings, get_settings
from libs.logs import configure_logging


def _dev(settings: Settings, _: argparse.Namespace) -> int:
    from libs.devstack import run_dev

    return run_dev(settings)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from libs.service import registered_services, serve

    service = registered_services()[args.service]
    configure_logging(service.name, settings.log_level)
    asyncio.run(serve(service, settings))
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


def parser() -> argparse.ArgumentParser:
    from libs.service import registered_services

    root = argparse.ArgumentParser(prog="folio", description="Run and operate Folio.")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("dev", help="start everything on embedded defaults").set_defaults(run=_dev)
    serve = commands.add_parser("serve", help="run one gRPC service")
    serve.add_argument("service", choices=list(registered_services()))
    serve.set_defaults(run=_serve)
    worker = commands.add_parser("worker", help="run the Celery worker pool for every task")
    worker.add_argument(
        "--concurrency", type=int, help="worker processes (FOLIO_WORKER_CONCURRENCY)"
    )
    worker.set_defaults(run=_worker)
    commands.add_parser("migrate", help="apply every service's migrations").set_defaults(
        run=_migrate
    )
    for command in registered_commands():
        sub = commands.add_parser(command.name, help=command.help)
        if command.run is not None:
            sub.set_defaults(run=command.run)
        if command.configure is not None:
            command.configure(sub)
    return root


def main(argv: list[str] | None = None) -> None:
    faulthandler.enable()
    args = parser().parse_args(argv)
    sys.exit(args.run(get_settings(), args))


if __name__ == "__main__":
    main()
