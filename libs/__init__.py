"""Folio's shared code: config, secrets, db, tokens, gRPC server and client, logging."""
