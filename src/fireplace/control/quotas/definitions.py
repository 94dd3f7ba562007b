"""The quotas an account has, their defaults, and the one check every create path calls.

A quota is `accounts/{a}/quotas/{quota_id}` with `maxValue` (int64) and `usage`. Usage is
counted from the live rows, so it can never drift from what exists.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fireplace.errors import ResourceExhausted


@dataclass(frozen=True)
class QuotaDefinition:
    quota_id: str
    description: str
    default: int
    unit: str = "count"
    enforced_by: str = "control plane"


QUOTAS: dict[str, QuotaDefinition] = {q.quota_id: q for q in (
    QuotaDefinition("deployments", "deployments not deleted", 20),
    QuotaDefinition("replicas", "replicas across all deployments (sum of max replica counts)", 16),
    QuotaDefinition("loaded-addons", "LoRA addons loaded into deployments", 200),
    QuotaDefinition("dataset-bytes", "bytes of uploaded dataset files", 10 << 30, unit="bytes"),
    QuotaDefinition("concurrent-fine-tuning-jobs", "fine-tuning jobs holding a training worker at once "
                    "(more wait in JOB_STATE_PENDING)", 4, enforced_by="controller"),
    QuotaDefinition("inference-requests-per-minute", "inference requests per minute", 6000,
                    enforced_by="inference gateway"),
    QuotaDefinition("inference-tokens-per-minute", "prompt + generated tokens per minute", 2_000_000,
                    enforced_by="inference gateway"),
)}


def quota_limit(session: Session, account_id: str, quota_id: str) -> int:
    from fireplace.control.quotas.tables import QuotaRow
    row = session.scalar(select(QuotaRow.max_value).where(
        QuotaRow.account_id == account_id, QuotaRow.quota_id == quota_id))
    return int(row) if row is not None else QUOTAS[quota_id].default


def enforce_quota(session: Session, account_id: str, quota_id: str, *, usage: int, adding: int = 1) -> None:
    """Raise 429 RESOURCE_EXHAUSTED naming the quota when usage + adding would pass it."""
    limit = quota_limit(session, account_id, quota_id)
    if usage + adding > limit:
        raise ResourceExhausted(
            f"quota {quota_id!r} exceeded for account {account_id!r}: "
            f"usage {usage} + {adding} requested > limit {limit}",
            details=[{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                      "violations": [{"subject": f"accounts/{account_id}/quotas/{quota_id}",
                                      "description": QUOTAS[quota_id].description}]}])
