"""sftj (supervised fine-tuning job): create (--wait: live epoch/step/loss/ETA), get (--metrics:
the per-step table or a terminal chart), list, update (display name), delete, cancel, resume."""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from fireplace.cli.grammar import verb
from fireplace.cli.output import Column, Kind, ident, note, short_id, state, stdout, when
from fireplace.cli.resources.common import Wait, WaitTimeout, completer, seconds
from fireplace.cli.resources.crud import delete_command, in_account, list_command, ref, rename_command
from fireplace.cli.session import current
from fireplace.cli.waiting import wait_for
from fireplace.errors import InvalidArgument

SFTJ = Kind("Supervised fine-tuning job", (
    ident(), state(), Column("DATASET", "dataset", short_id), Column("BASE MODEL", "baseModel", short_id),
    Column("OUTPUT MODEL", "outputModel", short_id), Column("%", "jobProgress.percent"), when()))
JobRef = Annotated[str, typer.Argument(help="Job ID or full name.", autocompletion=completer(
    "supervisedFineTuningJobs", "supervisedFineTuningJobs"))]
DONE = {"JOB_STATE_COMPLETED", "JOB_STATE_EARLY_STOPPED"}
FAILED = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED", "JOB_STATE_PAUSED"}
SPARKS = "▁▂▃▄▅▆▇█"


def _first(progress: dict, *keys: str):
    for key in keys:
        if progress.get(key) is not None:
            return progress[key]
    return None


class ProgressLine:
    """'RUNNING 42%  epoch 1/3  step 120/400  loss 1.234  ETA 2m10s' from jobProgress; the ETA is
    the job's own when it gives one, else extrapolated from the percent done while RUNNING."""

    def __init__(self, latest_metrics: Callable[[], dict | None] = lambda: None) -> None:
        self.latest_metrics = latest_metrics
        self.loss: tuple[object, float | None] = (None, None)   # (step, its train loss)
        self.running_since: float | None = None
        self.start_percent = 0.0
        self.estimate: tuple[float, float] | None = None    # (percent, ETA) while the percent stays

    def __call__(self, job: dict) -> str:
        p = job.get("jobProgress") or {}
        st = (job.get("state") or "").removeprefix("JOB_STATE_")
        percent = float(p.get("percent") or 0)
        parts = [f"{short_id(job.get('name'))}: {st}", f"{percent:.0f}%"]
        epoch, epochs = p.get("epoch"), job.get("epochs")
        if epoch is not None:
            parts.append(f"epoch {epoch}" + (f"/{epochs}" if epochs else ""))
        step, steps = _first(p, "step", "currentStep"), _first(p, "totalSteps", "steps")
        if step is not None:
            parts.append(f"step {step}" + (f"/{steps}" if steps else ""))
        loss = _first(p, "loss", "trainLoss")
        if loss is None and step:
            if self.loss[0] != step:   # one metrics read per new step
                last = self.latest_metrics() or {}
                self.loss = (step, _first(last, "trainLoss", "loss"))
            loss = self.loss[1]
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        eta = _first(p, "etaSeconds", "remainingSeconds", "estimatedRemainingSeconds")
        if eta is None and st == "RUNNING":
            now = time.monotonic()
            if self.running_since is None:
                self.running_since, self.start_percent = now, percent
            done = percent - self.start_percent
            if self.estimate and self.estimate[0] == percent:
                eta = self.estimate[1]
            elif done > 0:
                eta = (now - self.running_since) * (100 - percent) / done
                self.estimate = (percent, eta)
        if eta is not None and st == "RUNNING":
            parts.append(f"ETA {_clock(float(eta))}")
        return "  ".join(parts)


def _clock(total: float) -> str:
    total = int(round(total))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@verb("create", "sftj",
      "fireplace create sftj --dataset support-chats --base-model accounts/fireplace/models/smollm2-135m-instruct "
      "--output-model support-lora --epochs 2 --wait\n"
      "fireplace create sftj --dataset more-chats --warm-start-from support-lora --output-model support-lora-2")
def create_sftj(
    dataset: Annotated[str, typer.Option("--dataset", help="Training dataset (ID or full name).")],
    base_model: Annotated[Optional[str], typer.Option("--base-model", help="Base model to train an addon for.")] = None,
    warm_start_from: Annotated[Optional[str], typer.Option("--warm-start-from", help="An addon to continue "
                                                           "training (instead of --base-model).")] = None,
    output_model: Annotated[Optional[str], typer.Option("--output-model", help="ID of the addon it creates.")] = None,
    job_id: Annotated[Optional[str], typer.Option("--job-id", help="Default: generated.")] = None,
    evaluation_dataset: Annotated[Optional[str], typer.Option("--evaluation-dataset")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1)] = None,
    learning_rate: Annotated[Optional[float], typer.Option("--learning-rate")] = None,
    lora_rank: Annotated[Optional[int], typer.Option("--lora-rank", min=1)] = None,
    max_context_length: Annotated[Optional[int], typer.Option("--max-context-length", min=1)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Tokens per batch.")] = None,
    early_stop: Annotated[Optional[bool], typer.Option("--early-stop/--no-early-stop", show_default=False)] = None,
    display_name: Annotated[Optional[str], typer.Option("--display-name")] = None,
    wait: Wait = False, wait_timeout: WaitTimeout = "24h",
) -> None:
    """Create a supervised fine-tuning job (a LoRA addon from a dataset); --wait shows it train."""
    if bool(base_model) == bool(warm_start_from):
        raise InvalidArgument("give exactly one of --base-model and --warm-start-from")
    timeout = seconds(wait_timeout, "--wait-timeout")
    fields = {k: v for k, v in {
        "dataset": dataset, "baseModel": base_model, "warmStartFrom": warm_start_from, "outputModel": output_model,
        "evaluationDataset": evaluation_dataset, "epochs": epochs, "learningRate": learning_rate,
        "loraRank": lora_rank, "maxContextLength": max_context_length, "batchSize": batch_size,
        "earlyStop": early_stop, "displayName": display_name}.items() if v is not None}
    s = current()
    job = s.client.sft_jobs.create(fields, job_id=job_id)
    if wait:
        job = wait_for(lambda: s.client.sft_jobs.get(job["name"]), done=DONE, failed=FAILED, timeout=timeout,
                       describe=ProgressLine(lambda: s.client.sft_jobs.latest_metrics(job["name"])),
                       what=job["name"], poll=2.0,
                       percent=lambda j: float((j.get("jobProgress") or {}).get("percent") or 0))
    s.printer.one(job, SFTJ)


def _chart(label: str, values: list[float]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    width = 60
    if len(values) > width:  # average into `width` buckets
        step = len(values) / width
        values = [sum(values[int(i * step):int((i + 1) * step)]) / max(1, int((i + 1) * step) - int(i * step))
                  for i in range(width)]
    line = "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * (len(SPARKS) - 1) + 0.5))] for v in values)
    return f"{label:>12}  {high:.4f}\n{'':>12}  {line}\n{'':>12}  {low:.4f}"


@verb("get", "sftj", "fireplace get sftj my-job\nfireplace get sftj my-job --metrics\n"
                     "fireplace get sftj my-job --metrics --chart")
def get_sftj(job: JobRef,
             metrics: Annotated[bool, typer.Option("--metrics", help="Per-step metrics (loss, learning rate ...).")] = False,
             chart: Annotated[bool, typer.Option("--chart", help="With --metrics: draw each loss as a chart.")] = False,
             ) -> None:
    """Show a fine-tuning job, or with --metrics its per-step metrics."""
    s = current()
    if not metrics:
        s.printer.one(s.client.sft_jobs.get(job), SFTJ)
        return
    rows = list(s.client.sft_jobs.metrics(job))
    if chart and not s.structured:
        series = sorted({k for row in rows for k, v in row.items() if "loss" in k.lower() and isinstance(v, (int, float))})
        for key in series:
            values = [float(row[key]) for row in rows if isinstance(row.get(key), (int, float))]
            stdout().print(_chart(key, values), markup=False, highlight=False)
        if not series:
            note("no loss values yet")
        return
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    s.printer.many(rows, Kind("Metrics", tuple(_metric_column(k) for k in keys)))


def _metric_column(key: str) -> Column:
    """'trainLoss' -> TRAIN LOSS, floats to 4 significant digits, times as '5m ago'."""
    header = re.sub(r"(?<!^)(?=[A-Z])", " ", key).upper()
    if key.endswith("Time"):
        return when(key, header)

    def show(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    return Column(header, key, show)


list_command("sftj", in_account("supervisedFineTuningJobs"), "supervisedFineTuningJobs", SFTJ,
             "List the account's supervised fine-tuning jobs.",
             "fireplace list sftjs\nfireplace list sftjs --filter 'state=\"JOB_STATE_RUNNING\"'")
rename_command("sftj", [ref("job", JobRef)],
               lambda s, o: s.client.sft_jobs.update(o["job"], {"displayName": o["display_name"]}), SFTJ,
               "Rename a job; its training settings are fixed (create a new job to change them).",
               'fireplace update sftj my-job --display-name "support bot v2"')
delete_command("sftj", ref("job", JobRef), lambda c: c.sft_jobs,
               "Delete a job that is pending, paused or finished (cancel a running one first).",
               "fireplace delete sftj my-job")


@verb("cancel", "sftj", "fireplace cancel sftj my-job")
def cancel_sftj(job: JobRef) -> None:
    """Cancel a job (a running one stops at its next step)."""
    s = current()
    s.printer.one(s.client.sft_jobs.cancel(job), SFTJ)


@verb("resume", "sftj", "fireplace resume sftj my-job")
def resume_sftj(job: JobRef) -> None:
    """Resume a failed, cancelled or paused job from its last checkpoint."""
    s = current()
    s.printer.one(s.client.sft_jobs.resume(job), SFTJ)
