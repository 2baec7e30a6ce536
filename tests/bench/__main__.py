"""Runs every benchmark (``tests/bench/bench_*.py``, each with a ``main()``) in one process."""

import importlib
import pkgutil

import tests.bench


def main() -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules(tests.bench.__path__)):
        if module.startswith("bench_"):
            print(f"== {module} ==", flush=True)
            importlib.import_module(f"tests.bench.{module}").main()


if __name__ == "__main__":
    main()
