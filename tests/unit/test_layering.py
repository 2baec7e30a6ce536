"""The import contracts of `make lint`: libs never imports services or the gateway."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def contract_config(directory: Path) -> Path:
    """The project's own import-linter section, alone in a file."""
    section = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = [f"root_packages = {section['root_packages']!r}".replace("'", '"')]
    for contract in section["contracts"]:
        lines.append("\n[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            lines.append(f"{key} = " + repr(value).replace("'", '"'))
    config = directory / "importlinter.toml"
    config.write_text("[tool.importlinter]\n" + "\n".join(lines) + "\n")
    return config


def test_the_contracts_hold_for_the_project(tmp_path: Path) -> None:
    result = lint_imports(ROOT, contract_config(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_libs_module_importing_a_service_breaks_the_contract(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    for package in ("libs", "services", "services/user", "gateway"):
        (tree / package).mkdir(parents=True)
        (tree / package / "__init__.py").write_text("")
    (tree / "services/user/handlers.py").write_text("VALUE = 1\n")
    (tree / "libs/config.py").write_text("from services.user.handlers import VALUE\n")
    result = lint_imports(tree, contract_config(tmp_path))
    assert result.returncode != 0
    assert "libs imports neither services nor the gateway BROKEN" in result.stdout
    assert "libs.config -> services.user.handlers" in result.stdout
