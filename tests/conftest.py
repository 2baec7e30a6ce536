pytest_plugins = [
    "tests.fixtures.engines",
    "tests.fixtures.services",
    "tests.fixtures.google_issuer",
    "tests.fixtures.stack",
    "tests.fixtures.s3",
]
