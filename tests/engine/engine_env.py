"""Environment context for the engine GPU tests: SGLang's processes inherit what is set here."""

from er_verl.bench.decode import environ  # noqa: F401 - re-exported for the tests
