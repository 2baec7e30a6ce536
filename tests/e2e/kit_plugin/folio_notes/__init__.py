"""A test-only Folio service that joins the deployment as a plugin."""
