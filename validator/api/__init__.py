"""Score API and dashboard over the validator's database (``create_app``), and its cache hook.

The validator calls :func:`invalidate` with its Redis client after committing a window.
"""

from validator.api.app import create_app
from validator.api.cache import invalidate

__all__ = ["create_app", "invalidate"]
