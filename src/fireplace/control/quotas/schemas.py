"""Wire shapes of quotas and usage (Fireplace extensions; int64 as strings)."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from fireplace.api.wire import Int64, Status, Wire, rfc3339
from fireplace.control.quotas.definitions import QuotaDefinition

MAX_INT64 = (1 << 63) - 1
# the largest integer below 2^63 that a double holds exactly: clients (and schemathesis) compare
# JSON numbers as doubles, so the spec states this bound; the server itself accepts up to MAX_INT64
JSON_SAFE_INT64_MAX = (1 << 63) - 1024


class Quota(Wire):
    name: str
    quota_id: str
    description: str
    unit: str
    enforced_by: str
    max_value: Int64
    default_value: Int64
    usage: Int64
    status: Status = Field(default_factory=Status)
    update_time: str | None = None
    # AIP-154: "0" while the quota has its default; a PATCH carrying a stale one is 409 ABORTED
    etag: str

    @classmethod
    def of(cls, account_id: str, definition: QuotaDefinition, max_value: int, usage: int,
           update_time=None, etag: int = 0) -> "Quota":
        return cls(name=f"accounts/{account_id}/quotas/{definition.quota_id}", quota_id=definition.quota_id,
                   description=definition.description, unit=definition.unit,
                   enforced_by=definition.enforced_by, max_value=max_value, default_value=definition.default,
                   usage=usage, update_time=rfc3339(update_time), etag=str(etag))


def _non_negative(value: int) -> int:
    if value < 0:
        raise ValueError("must not be negative")
    return value


class QuotaUpdate(Wire):
    """PATCH body: only maxValue is writable (platform admin); `etag` (or If-Match) must be current."""
    max_value: Annotated[Int64, AfterValidator(_non_negative),
                         WithJsonSchema({"type": "integer", "minimum": 0, "maximum": JSON_SAFE_INT64_MAX})] | None = None
    etag: str | None = Field(default=None, max_length=64)


class ListQuotasResponse(Wire):
    quotas: list[Quota]
    next_page_token: str = ""
    total_size: int = 0


class ModelUsage(Wire):
    """Metered inference of one model on one UTC day: completed requests and the tokens their
    answers reported (failed requests are not counted)."""
    model: str
    day: str = Field(description="UTC day, YYYY-MM-DD")
    requests: Int64
    prompt_tokens: Int64
    completion_tokens: Int64


class Usage(Wire):
    """`GET /v1/accounts/{a}/usage`: current usage per quota ID, and metered inference per model
    and UTC day over [startDate, endDate]."""
    name: str
    usage: dict[str, Int64]
    start_date: str
    end_date: str
    model_usage: list[ModelUsage] = Field(default_factory=list)
