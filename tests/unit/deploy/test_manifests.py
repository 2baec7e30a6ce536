"""The deployment files: valid Kubernetes objects, and commands the folio CLI accepts."""

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from libs.cli import parser
from libs.devstack import available_services

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes_objects(path: Path) -> None:
    for document in documents(path):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def container_commands() -> list[list[str]]:
    commands = []
    for path in MANIFESTS:
        for document in documents(path):
            pod = document.get("spec", {}).get("template", {}).get("spec", {})
            commands += [c["args"] for c in pod.get("containers", []) if "args" in c]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    # Only Folio's own image runs the folio CLI; Redis and MinIO run their own commands.
    commands += [s["command"] for s in compose["services"].values() if "build" in s]
    return commands


def test_every_process_runs_a_folio_command() -> None:
    commands = container_commands()
    for command in commands:
        parser().parse_args(command)
    served = {command[1] for command in commands if command[0] == "serve"}
    assert set(available_services()) <= served
    assert {"gateway", "worker", "migrate"} <= {command[0] for command in commands}
