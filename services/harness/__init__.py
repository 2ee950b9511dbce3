"""Real parts started for tests, benchmarks and the demo (no mocks): model servers, models."""
