"""`fireplace controller`: the reconcile loop alone, without an API server (scale-out: run it on
the machines that host replicas; it reconciles only while it holds the DB lease)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def controller(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data directory (FIREPLACE_HOME)."),
    local_replica_slots: Optional[int] = typer.Option(None, help="Model replicas this controller runs at once."),
) -> None:
    """Run the controller until interrupted (same settings as `fireplace serve`).

    Example:

      $ FIREPLACE_DATABASE_URL=postgresql://db/fireplace FIREPLACE_BLOB_URL=s3://bucket/fp fireplace controller
    """
    import logging
    import signal
    import threading

    from fireplace.config import SettingsError, load_settings
    from fireplace.db.engine import make_engine, make_session_factory
    from fireplace.db.migrate import upgrade
    from fireplace.orchestration.controller import Controller
    from fireplace.storage import BlobStore

    overrides = {"home": data_dir} if data_dir else {}
    try:
        settings = load_settings(local_replica_slots=local_replica_slots, **overrides)
    except SettingsError as exc:
        typer.echo(f"fireplace controller: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    ctl = Controller(settings, make_session_factory(engine), BlobStore(settings.resolved_blob_url))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ctl.start()
    stop.wait()
    ctl.stop()
    engine.dispose()
