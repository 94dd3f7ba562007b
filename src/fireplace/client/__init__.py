"""The Python client of Fireplace's public REST API (used by the CLI, the web console's tests
and the benchmarks). Errors are fireplace.errors classes; see client/errors.py."""
from fireplace.client.api import DEFAULT_BASE_URL, Fireplace
from fireplace.client.errors import ConnectionFailed
from fireplace.client.inference import chunk_text

__all__ = ["DEFAULT_BASE_URL", "ConnectionFailed", "Fireplace", "chunk_text"]
