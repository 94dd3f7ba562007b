"""Training failures that are the job's fault, not the worker's: the job fails once with the
message (a user can act on it) and is never retried. A crash (the process dies) is retried."""
from __future__ import annotations


class TrainingError(Exception):
    """Deterministic: bad data, a model that cannot be trained, out of memory."""
