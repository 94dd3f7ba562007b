"""`fireplace` CLI: serve (API server + controller), and resource verbs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Fireplace: a self-hosted LLM platform.", no_args_is_help=True)


@app.callback()
def _main() -> None:
    """Fireplace: a self-hosted LLM platform."""


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Bind address (FIREPLACE_HOST, default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (FIREPLACE_PORT, default 8000)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data directory (FIREPLACE_HOME, default ~/.fireplace)."),
    allow_signup: Optional[bool] = typer.Option(None, "--allow-signup/--no-allow-signup", help="Let anyone create an account."),
    workers: int = typer.Option(1, help="uvicorn worker processes."),
) -> None:
    """Run the API server (and the controller) until interrupted."""
    import uvicorn

    from fireplace.api.app import create_app
    from fireplace.config import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "home": data_dir,
                                    "allow_signup": allow_signup}.items() if v is not None}
    settings = Settings(**overrides)
    application = create_app(settings)
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, timeout_graceful_shutdown=10)


if __name__ == "__main__":
    app()
