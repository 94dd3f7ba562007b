"""`fireplace` CLI: the processes (serve, ...) and, through the public REST API only, every
resource verb (firectl's, in both word orders), chat and complete. See cli/grammar.py."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

from fireplace.cli import grammar
from fireplace.cli.session import GLOBAL_PARAMS, Options, set_root_options

EPILOG = ("Connection: --base-url / FIREPLACE_BASE_URL (default http://localhost:8000), --api-key / "
          "FIREPLACE_API_KEY (default: `fireplace login`'s file, else the credentials file of the local "
          "data dir, so `fireplace serve` then `fireplace list models` just works), --account / "
          "FIREPLACE_ACCOUNT (default: the key's own).\n\n"
          "Exit status: 0 ok, 1 other failure, 2 usage, 3 invalid request, 4 not found, 5 permission, "
          "6 conflict, 7 quota or rate limit, 8 server error, 9 server unreachable, 10 wait failed or "
          "timed out, 130 interrupted.\n\n"
          "Examples:\n\n  $ fireplace list models --account fireplace\n\n"
          "  $ fireplace create dataset chats ./train.jsonl\n\n  $ fireplace deployment create my-base --wait")
# Exit statuses: fireplace.cli.exit_codes.
app = typer.Typer(help="Fireplace: a self-hosted LLM platform.", no_args_is_help=True, epilog=EPILOG)


def _main(ctx: typer.Context, **options) -> None:
    """Fireplace: a self-hosted LLM platform."""
    set_root_options(ctx, Options(**options))


# The connection/output options, also accepted before the verb: `fireplace -o json list models`.
_CTX = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
_main.__signature__ = inspect.Signature([_CTX, *GLOBAL_PARAMS])  # type: ignore[attr-defined]
_main.__annotations__ = {"ctx": typer.Context, **{p.name: p.annotation for p in GLOBAL_PARAMS}}
app.callback()(_main)


@app.command(epilog=grammar.examples("fireplace serve\nfireplace serve --port 9000 --data-dir /srv/fireplace "
                                     "--allow-signup"))
def serve(
    host: Optional[str] = typer.Option(None, help="Bind address (FIREPLACE_HOST, default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (FIREPLACE_PORT, default 8000)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data directory (FIREPLACE_HOME, default ~/.fireplace)."),
    allow_signup: Optional[bool] = typer.Option(None, "--allow-signup/--no-allow-signup", help="Let anyone create an account."),
    local_replica_slots: Optional[int] = typer.Option(
        None, help="Model replicas this server runs at once (FIREPLACE_SERVING_LOCAL_REPLICA_SLOTS; "
                   "default one per GPU, else 2)."),
) -> None:
    """Run the API server (and the controller) until interrupted: one process. For more, start
    several servers on one database and blob store (README, "Scaling out")."""
    import uvicorn

    from fireplace.api.app import create_app
    from fireplace.config import SettingsError, load_settings

    overrides = {k: v for k, v in {"host": host, "port": port, "home": data_dir,
                                    "allow_signup": allow_signup}.items() if v is not None}
    try:
        settings = load_settings(local_replica_slots=local_replica_slots, **overrides)
    except SettingsError as exc:
        typer.echo(f"fireplace serve: {exc}", err=True)
        raise typer.Exit(2) from None
    application = create_app(settings)
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, timeout_graceful_shutdown=10)


# Process commands (hidden: the controller starts them), registered here one line each.
from fireplace.cli import replica as _replica  # noqa: E402

app.command("replica", hidden=True)(_replica.replica)
from fireplace.cli import train as _train  # noqa: E402
app.command("train", hidden=True)(_train.train)
from fireplace.cli import controller as _controller  # noqa: E402
app.command("controller")(_controller.controller)

# The resource verbs, chat, complete, login ... (fireplace.cli.grammar).
grammar.install(app)

if __name__ == "__main__":
    app()
