"""--wait: poll a resource until it reaches a wanted state (or a failed one, or the timeout),
showing each change: a live line on a terminal, one printed line per change otherwise. A poll
the server does not answer (timeout, 503 after the client's retries) does not end the wait."""
from __future__ import annotations

import time
from collections.abc import Callable

from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fireplace import errors
from fireplace.cli.exit_codes import WaitFailed
from fireplace.cli.output import is_terminal, note, stderr

POLL_SECONDS = 1.0


def wait_for(fetch: Callable[[], dict], *, done: set[str], failed: set[str], timeout: float,
             describe: Callable[[dict], str], what: str, poll: float = POLL_SECONDS,
             percent: Callable[[dict], float | None] | None = None) -> dict:
    """Returns the resource once its `state` is in `done`; WaitFailed on a failed state or timeout.
    `describe(resource)` is the status line (the time waited so far is added to it); off a
    terminal a line is printed only when it changes. With `percent`, a terminal also shows a bar."""
    start = time.monotonic()
    live = Live(console=stderr(), transient=False, auto_refresh=False) if is_terminal() else None
    last_line = None
    try:
        if live:
            live.start()
        while True:
            try:
                resource = fetch()
            except errors.Unavailable as exc:   # the server is busy or restarting: keep waiting
                elapsed = time.monotonic() - start
                if elapsed >= timeout:
                    raise WaitFailed(f"{what}: the server did not answer ({exc.message}) and "
                                     f"--wait-timeout ({timeout:.0f}s) has passed") from None
                note(f"(no answer from the server: {exc.message}; still waiting)")
                time.sleep(min(poll, max(0.05, timeout - elapsed)))
                continue
            elapsed = time.monotonic() - start
            line = describe(resource)
            if live:
                status = Text(f"{line}  ({elapsed:.0f}s)")
                done_percent = percent(resource) if percent else None
                bar = ProgressBar(total=100, completed=done_percent, width=40) if done_percent is not None else None
                if bar is not None:
                    grid = Table.grid(padding=(0, 1))
                    grid.add_row(bar, status)
                    live.update(grid, refresh=True)
                else:
                    live.update(status, refresh=True)
            elif line != last_line:
                note(f"{line}  ({elapsed:.0f}s)")
            last_line = line
            state = resource.get("state", "")
            if state in done:
                return resource
            if state in failed:
                message = (resource.get("status") or {}).get("message") or ""
                raise WaitFailed(f"{what} ended {state}" + (f": {message}" if message else ""))
            if elapsed >= timeout:
                raise WaitFailed(f"{what} still {state} after {timeout:.0f}s (--wait-timeout)")
            time.sleep(min(poll, max(0.05, timeout - elapsed)))
    finally:
        if live:
            live.stop()
