"""`fireplace train --job NAME`: run one fine-tuning job's worker (started by the controller
through its executor; see fireplace.training.worker). Database and blob store come from the
usual settings (FIREPLACE_DATABASE_URL, FIREPLACE_BLOB_URL, FIREPLACE_HOME)."""
from __future__ import annotations

import logging

import typer


def train(
    job: str = typer.Option(..., "--job", help="The job's full name: accounts/A/supervisedFineTuningJobs/J."),
    attempt: int = typer.Option(..., "--attempt", help="The worker attempt the controller assigned (fencing token)."),
) -> None:
    """Train one supervised fine-tuning job (a worker process; the controller starts it)."""
    from fireplace.orchestration.parent_watch import watch_parent
    from fireplace.training.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    watch_parent()
    raise typer.Exit(run_worker(job, attempt))
