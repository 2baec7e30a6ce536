"""Folio's REST gateway: routes, JSON and docs come from the upstreams' reflected descriptors."""
