"""Current usage of every quota, counted from the live rows of the packages that own them.

    account_usage(session, "acme") -> {"deployments": 2, "replicas": 3, ..., "inference-tokens-per-minute": 0}

Each count comes from its owner's usage.py (imported lazily: this package must not import
theirs at load time). Per-minute inference usage lives in the gateway's rate limiter, not in
the database, so it reads 0 here.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

from sqlalchemy.orm import Session

# quota id -> (module, function(session, account_id) -> int)
COUNTERS: dict[str, tuple[str, str]] = {
    "deployments": ("fireplace.control.deployments.usage", "count_deployments"),
    "replicas": ("fireplace.control.deployments.usage", "count_replicas"),
    "loaded-addons": ("fireplace.control.deployed_models.usage", "count_loaded_addons"),
    "dataset-bytes": ("fireplace.control.datasets.usage", "dataset_bytes"),
    "concurrent-fine-tuning-jobs": ("fireplace.control.fine_tuning.usage", "count_jobs_holding_workers"),
}


def _counter(module: str, function: str) -> Callable[[Session, str], int] | None:
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as exc:
        if exc.name == module:  # that package has not written its usage.py (yet)
            return None
        raise


def quota_usage(session: Session, account_id: str, quota_id: str) -> int:
    if quota_id not in COUNTERS:
        return 0
    counter = _counter(*COUNTERS[quota_id])
    return int(counter(session, account_id) or 0) if counter else 0


def account_usage(session: Session, account_id: str) -> dict[str, int]:
    from fireplace.control.quotas.definitions import QUOTAS
    return {quota_id: quota_usage(session, account_id, quota_id) for quota_id in QUOTAS}
