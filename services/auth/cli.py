"""``folio keys rotate``: add an access-token signing key to the secrets store."""

import argparse
import sys
import time

from libs.commands import Command
from libs.config import Settings, settings_as
from libs.secrets import SecretsError
from services.auth.keys import rotate_signing_keys
from services.auth.settings import SigningSettings


def _rotate(settings: Settings, _args: argparse.Namespace) -> int:
    try:
        rotation = rotate_signing_keys(settings_as(SigningSettings, settings))
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


def _configure(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="keys_command", required=True)
    commands.add_parser(
        "rotate", help="add a signing key; it signs once verifiers have had time to fetch it"
    ).set_defaults(run=_rotate)


KEYS = Command(name="keys", help="access-token signing keys", configure=_configure)
