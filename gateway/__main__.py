"""``python -m gateway``: serve the gateway alone (``folio gateway`` does the same)."""

from gateway.server import run

if __name__ == "__main__":
    run()
