"""Environment context for the engine GPU tests: SGLang's processes inherit what is set here."""

import contextlib
import os


@contextlib.contextmanager
def environ(**updates):
    """Set (or, with None, unset) environment variables for the block; SGLang's processes inherit them."""
    saved = {k: os.environ.get(k) for k in updates}
    for key, value in updates.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
