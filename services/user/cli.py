"""``folio token mint``: development access tokens."""

import argparse
import asyncio
import sys

from libs.commands import Command
from libs.config import Settings
from libs.devstack import dev_database_url
from libs.secrets import load_secrets
from services.user.dev_tokens import mint_dev_token


def _mint(settings: Settings, args: argparse.Namespace) -> int:
    # Only the development keys this machine generated may mint: never keys from the
    # environment or a secrets store, whatever FOLIO_ENV says.
    if settings.is_production or load_secrets(settings).source != "generated":
        print("token minting is for development only (generated dev keys)", file=sys.stderr)
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


def _configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="token_command", required=True)
    mint = commands.add_parser("mint", help="(dev only) create the user if needed, print a token")
    mint.add_argument("--email", required=True)
    mint.add_argument("--premium", action="store_true")
    mint.add_argument("--admin", action="store_true")
    mint.set_defaults(run=_mint)


TOKEN = Command(name="token", help="access tokens", configure=_configure)
