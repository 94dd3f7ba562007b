"""quota list|get|update, and `usage` (the account's current usage per quota)."""
from __future__ import annotations

from typing import Annotated

import typer

from fireplace.cli.grammar import top, verb
from fireplace.cli.output import Column, Kind
from fireplace.cli.session import current

QUOTA = Kind("Quota", (Column("QUOTA", "quotaId"), Column("USAGE", "usage"), Column("MAX", "maxValue"),
                       Column("UNIT", "unit"), Column("DESCRIPTION", "description", wrap=True)))


@verb("list", "quota", "fireplace quota list\nfireplace list quotas -o json")
def list_quotas() -> None:
    """List the account's quotas: limit and current usage of each."""
    s = current()
    s.printer.many(s.client.quotas.list().get("quotas", []), QUOTA)


@verb("get", "quota", "fireplace quota get deployments")
def get_quota(quota: Annotated[str, typer.Argument(help="Quota ID (see quota list) or full name.")]) -> None:
    """Show one quota."""
    s = current()
    s.printer.one(s.client.quotas.get(quota), QUOTA)


@verb("update", "quota", "fireplace quota update deployments --max-value 10 --account dev-team")
def update_quota(quota: Annotated[str, typer.Argument(help="Quota ID or full name.")],
                 max_value: Annotated[int, typer.Option("--max-value", min=0, help="The new limit.")]) -> None:
    """Change a quota's limit (platform admin)."""
    s = current()
    s.printer.one(s.client.quotas.update(quota, max_value), QUOTA)


@top("usage", "fireplace usage\nfireplace usage -o json")
def usage() -> None:
    """Show the account's current usage, per quota."""
    s = current()
    answer = s.client.quotas.usage()
    if s.structured:
        s.printer.one(answer, QUOTA)
        return
    rows = [{"name": key, "quotaId": key, "usage": value} for key, value in sorted((answer.get("usage") or {}).items())]
    s.printer.many(rows, Kind("Usage", (Column("QUOTA", "quotaId"), Column("USAGE", "usage"))))
    # Metered breakdowns the server may add (e.g. per model and day): any list of records.
    for key, value in answer.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            keys: list[str] = []
            for row in value:
                keys += [k for k in row if k not in keys]
            typer.echo(f"\n{key}:")
            s.printer.many(value, Kind(key, tuple(Column(k, k) for k in keys)))
