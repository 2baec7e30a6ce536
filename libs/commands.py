"""Plugins of the ``folio`` command, registered as ``folio.commands`` entry points."""

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from libs.config import Settings

COMMANDS_GROUP = "folio.commands"
Run = Callable[[Settings, argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """A ``folio`` subcommand contributed by a package outside ``libs``."""

    name: str
    help: str
    # What the command does; None when ``configure`` adds subcommands that each set one.
    run: Run | None = None
    # Adds the command's own arguments or subcommands.
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    # Whether ``folio dev`` runs it as one of the stack's long-running processes.
    dev_process: bool = False


def registered_commands() -> list[Command]:
    """Every command plugin installed in this environment, by name."""
    commands = []
    for entry in entry_points(group=COMMANDS_GROUP):
        command = entry.load()
        if not isinstance(command, Command):
            raise TypeError(f"entry point {entry.name} is not a Command: {command!r}")
        commands.append(command)
    return sorted(commands, key=lambda c: c.name)
