"""How a failed command reports itself on stderr: the server's message, then what it listed
(each bad line of a dataset with its field, the OpenAI error's param), then the request ID to
quote in a bug report. The exit status comes from fireplace.cli.exit_codes."""
from __future__ import annotations

from rich.text import Text

from fireplace import errors
from fireplace.cli.output import stderr


def report_error(exc: errors.FireplaceError) -> None:
    """The server's message on stderr, then what it listed (a dataset's bad lines ...)."""
    console = stderr()
    lines = [d for d in exc.details if isinstance(d, dict) and "line" in d]
    headline = exc.message
    if lines:  # the details list them all; the message repeats them (cut at its limit)
        headline = f"{exc.message.split(': ', 1)[0]} ({len(lines)} {'error' if len(lines) == 1 else 'errors'}):"
    console.print(error_text(headline))
    for detail in exc.details[:100]:
        if isinstance(detail, dict) and "line" in detail:
            where = f"line {detail['line']}" if detail.get("line") else "file"
            if detail.get("field"):
                where += f", {detail['field']}"
            console.print(f"  {where}: {detail.get('message', '')}", markup=False, highlight=False)
        elif isinstance(detail, dict) and detail.get("param"):
            console.print(f"  param: {detail['param']}", markup=False, highlight=False)
    request_id = getattr(exc, "request_id", "")
    if request_id:
        console.print(f"  (request id {request_id})", markup=False, highlight=False, style="dim")


def error_text(message: str) -> Text:
    return Text.assemble(("Error: ", "bold red"), message)
