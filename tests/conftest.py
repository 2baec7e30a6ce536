pytest_plugins = ["tests.fixtures.engines", "tests.fixtures.services", "tests.fixtures.stack"]
