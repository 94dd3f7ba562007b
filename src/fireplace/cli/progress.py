"""Progress on stderr: rich bars on a terminal; plain lines otherwise (logs, CI, pipes), one
when a file starts, at each quarter, and when it is done."""
from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from fireplace.cli.output import is_terminal, note, stderr
from fireplace.client.transfers import Progress as ProgressFn


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@contextmanager
def transfer_progress(verb: str) -> Iterator[ProgressFn]:
    """A `progress(filename, done, total)` callback for fireplace.client.transfers."""
    if is_terminal():
        with Progress(TextColumn(f"{verb} [bold]{{task.description}}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), console=stderr()) as bars:
            tasks: dict[str, TaskID] = {}

            def update(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bars.add_task(name, total=total or None)
                bars.update(tasks[name], completed=done, total=total or None)
            yield update
        return
    reported: dict[str, int] = {}

    def lines(name: str, done: int, total: int) -> None:
        quarter = 4 if total == 0 or done >= total else (done * 4) // total
        if reported.get(name, -1) >= quarter:
            return
        reported[name] = quarter
        note(f"{verb} {name}: {_size(done)} of {_size(total)} ({quarter * 25}%)")
    yield lines
