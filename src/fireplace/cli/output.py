"""How results are printed: `-o table` (rich, for people: short IDs, human times, coloured
states), `-o json` / `-o yaml` (each resource exactly as the API returned it; a list is an
array), `-q` (full resource names only, one per line, for xargs).

Progress and messages go to stderr, so stdout carries only the result.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "json", "yaml")
GOOD = {"READY", "DEPLOYED", "JOB_STATE_COMPLETED", "COMPLETED", "OK"}
BAD = {"FAILED", "DELETED", "DELETING", "UNDEPLOYING", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
       "JOB_STATE_EXPIRED", "JOB_STATE_CANCELLING", "SUSPENDED"}


def stdout() -> Console:
    return Console(soft_wrap=False, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A line for the person at the terminal (stderr; never mixed into the result)."""
    stderr().print(message, markup=False, highlight=False)


def short_id(name: str | None) -> str:
    return (name or "").rsplit("/", 1)[-1]


def human_time(value: str | None, now: datetime | None = None) -> str:
    """'2026-12-01T13:40:00Z' -> '12s ago' / '5m ago' / '3h ago' / '2d ago' / '2026-10-01'."""
    if not value:
        return ""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    seconds = ((now or datetime.now(timezone.utc)) - when).total_seconds()
    if seconds < 0:
        return when.strftime("%Y-%m-%d %H:%M")
    for limit, unit, size in ((60, "s", 1), (3600, "m", 60), (86400, "h", 3600), (30 * 86400, "d", 86400)):
        if seconds < limit:
            return f"{int(seconds // size)}{unit} ago"
    return when.strftime("%Y-%m-%d")


def state_text(state: str | None) -> Text:
    state = state or ""
    style = "green" if state in GOOD else "red" if state in BAD else "yellow" if state else ""
    return Text(state.removeprefix("JOB_STATE_"), style=style)


def dig(resource: dict, path: str) -> Any:
    """'peftDetails.baseModel' -> resource['peftDetails']['baseModel'] (None when absent)."""
    value: Any = resource
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


@dataclass(frozen=True)
class Column:
    header: str
    path: str
    show: Callable[[Any], Any] = str      # value -> str or rich Text
    wrap: bool = False                    # long text folds (else the column keeps its width)


def ident(path: str = "name", header: str = "ID") -> Column:
    return Column(header, path, short_id)


def when(path: str = "createTime", header: str = "CREATED") -> Column:
    return Column(header, path, human_time)


def state(path: str = "state", header: str = "STATE") -> Column:
    return Column(header, path, state_text)


@dataclass(frozen=True)
class Kind:
    """How one resource type looks in a table."""
    title: str
    columns: Sequence[Column] = field(default_factory=tuple)


@dataclass
class Printer:
    fmt: str = "table"
    quiet: bool = False

    def one(self, resource: dict, kind: Kind) -> None:
        if self._structured([resource], single=True):
            return
        table = Table(title=kind.title, show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in resource.items():
            if key == "state" or key.endswith("State"):
                table.add_row(key, state_text(str(value)))
            elif isinstance(value, (dict, list)):
                table.add_row(key, json.dumps(value, separators=(", ", ": ")))
            elif key.endswith("Time"):
                table.add_row(key, f"{value}  ({human_time(value)})")
            else:
                table.add_row(key, str(value))
        stdout().print(table)

    def many(self, resources: list[dict], kind: Kind) -> None:
        if self._structured(resources, single=False):
            return
        table = Table(title=None, header_style="bold", box=None, pad_edge=False)
        for column in kind.columns:
            table.add_column(column.header, no_wrap=not column.wrap, overflow="fold", min_width=len(column.header))
        for resource in resources:
            cells = []
            for column in kind.columns:
                value = dig(resource, column.path)
                shown = column.show(value) if value is not None else ""
                cells.append(shown if isinstance(shown, Text) else Text(str(shown)))
            table.add_row(*cells)
        stdout().print(table)
        if not resources:
            note(f"no {kind.title.lower()} found")

    def _structured(self, resources: list[dict], single: bool) -> bool:
        if self.quiet:
            for resource in resources:
                typer.echo(resource.get("name", ""))
            return True
        if self.fmt in ("json", "yaml"):
            dump(resources[0] if single else resources, self.fmt)
            return True
        return False


def dump(value: Any, fmt: str) -> None:
    """The value as JSON (indented) or YAML on stdout."""
    if fmt == "json":
        typer.echo(json.dumps(value, indent=2, ensure_ascii=False))
    else:
        import yaml
        typer.echo(yaml.safe_dump(value, sort_keys=False, allow_unicode=True), nl=False)


def is_terminal() -> bool:
    return sys.stderr.isatty()
