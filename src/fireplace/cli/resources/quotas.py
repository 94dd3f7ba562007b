"""quota list|get|update, and `usage` (the account's current usage per quota, and its metered
inference by model and UTC day)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from fireplace.cli.grammar import top, verb
from fireplace.cli.output import Column, Kind
from fireplace.cli.resources.crud import get_command, ref
from fireplace.cli.session import current

QUOTA = Kind("Quota", (Column("QUOTA", "quotaId"), Column("USAGE", "usage"), Column("MAX", "maxValue"),
                       Column("UNIT", "unit"), Column("DESCRIPTION", "description", wrap=True)))


@verb("list", "quota", "fireplace quota list\nfireplace list quotas -o json")
def list_quotas() -> None:
    """List the account's quotas: limit and current usage of each."""
    s = current()
    s.printer.many(s.client.quotas.list().get("quotas", []), QUOTA)


get_command("quota", ref("quota", Annotated[str, typer.Argument(help="Quota ID (see quota list) or full name.")]),
            lambda c: c.quotas, QUOTA, "Show one quota.", "fireplace quota get deployments")


@verb("update", "quota", "fireplace quota update deployments --max-value 10 --account dev-team")
def update_quota(quota: Annotated[str, typer.Argument(help="Quota ID or full name.")],
                 max_value: Annotated[int, typer.Option("--max-value", min=0, help="The new limit.")]) -> None:
    """Change a quota's limit (platform admin)."""
    s = current()
    s.printer.one(s.client.quotas.update(quota, max_value), QUOTA)


MODEL_USAGE = Kind("Inference usage", (Column("DAY", "day"), Column("MODEL", "model"),
                                       Column("REQUESTS", "requests"), Column("PROMPT TOKENS", "promptTokens"),
                                       Column("COMPLETION TOKENS", "completionTokens")))


@top("usage", "fireplace usage\nfireplace usage --start-date 2026-11-01 --end-date 2026-11-30\nfireplace usage -o json")
def usage(start_date: Annotated[Optional[str], typer.Option("--start-date", help="First UTC day, YYYY-MM-DD "
                                                            "(default: the 30 days ending at --end-date).")] = None,
          end_date: Annotated[Optional[str], typer.Option("--end-date", help="Last UTC day, YYYY-MM-DD "
                                                          "(default: today).")] = None) -> None:
    """Show the account's usage: each quota's current count, and inference (completed requests,
    prompt and completion tokens) by model and UTC day."""
    s = current()
    answer = s.client.quotas.usage(start_date=start_date, end_date=end_date)
    if s.structured:
        s.printer.one(answer, QUOTA)
        return
    rows = [{"name": key, "quotaId": key, "usage": value} for key, value in sorted((answer.get("usage") or {}).items())]
    s.printer.many(rows, Kind("Usage", (Column("QUOTA", "quotaId"), Column("USAGE", "usage"))))
    typer.echo(f"\nInference by model and day, {answer.get('startDate')} to {answer.get('endDate')} (UTC):")
    s.printer.many(answer.get("modelUsage") or [], MODEL_USAGE)
