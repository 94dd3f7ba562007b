"""One fine-tuning job in one process: `fireplace train --job NAME --attempt N`.

The controller started us after moving the job to RUNNING (or it was already in
WRITING_RESULTS) and setting worker_attempt = N. We:
  1. heartbeat every HEARTBEAT_S (heartbeat_time, jobProgress), and stop at the next step
     when the job is CANCELLING or no longer ours (fencing on worker_attempt);
  2. RUNNING: restore the last checkpoint if any, train, checkpoint every interval, then a
     final checkpoint holding the output addon, and move to WRITING_RESULTS;
  3. WRITING_RESULTS: copy the addon into the output model's blobs and register it once
     (a READY model made by this job is taken as done), then COMPLETED (or EARLY_STOPPED).
A TrainingError (bad data, no memory, a model we cannot train) fails the job with its
message: deterministic, so never retried. Dying any other way is a crash: the controller
re-queues the job and a new worker resumes from the last checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from fireplace.config import Settings
from fireplace.control.fine_tuning import runtime, states
from fireplace.control.fine_tuning.tables import SftJobCheckpointRow, SftJobMetricRow, SftJobRow
from fireplace.db.base import utcnow
from fireplace.db.engine import make_engine, make_session_factory
from fireplace.storage import BlobStore
from fireplace.training import checkpoint_store as store
from fireplace.training.errors import TrainingError
from fireplace.training.hyperparams import from_spec
from fireplace.training.model_files import local_model_dir, split_model_name

log = logging.getLogger("fireplace.train")
HEARTBEAT_S = 2.0
METRICS_FLUSH_S = 2.0
OUTPUT_FILES = ["adapter_config.json", "adapter_model.safetensors"]
CRASH_EXIT_CODE = 86   # fault injection's simulated crash


@dataclass(frozen=True)
class JobRef:
    account_id: str
    job_id: str
    attempt: int

    @property
    def name(self) -> str:
        return f"accounts/{self.account_id}/supervisedFineTuningJobs/{self.job_id}"


class Heartbeat(threading.Thread):
    """Marks the job alive and publishes progress; notices cancel and supersession."""

    def __init__(self, factory: sessionmaker[Session], job: JobRef):
        super().__init__(name="heartbeat", daemon=True)
        self.factory, self.job = factory, job
        self.progress: dict | None = None
        self.stop_requested = threading.Event()
        self.superseded = False
        self._done = threading.Event()

    def beat(self) -> None:
        try:
            with self.factory() as s:
                row = runtime.owned_job(s, self.job.account_id, self.job.job_id, self.job.attempt)
                if row.state not in (states.RUNNING, states.WRITING_RESULTS):
                    self.stop_requested.set()
                    return
                row.heartbeat_time = utcnow()
                if self.progress is not None:
                    row.job_progress = dict(self.progress)
                s.commit()
        except runtime.Superseded:
            self.superseded = True
            self.stop_requested.set()
        except Exception as exc:  # a DB hiccup: try again next beat
            log.warning("heartbeat failed: %s", exc)

    def run(self) -> None:
        while not self._done.wait(HEARTBEAT_S):
            self.beat()

    def close(self) -> None:
        self._done.set()


class JobHooks:
    """TrainerHooks writing metrics, checkpoints and events for one job."""

    def __init__(self, worker: "JobWorker", trainer, started_step: int):
        self.w, self.trainer = worker, trainer
        self.pending: dict[int, object] = {}
        self.last_flush = time.monotonic()
        self.started_at, self.started_step = time.monotonic(), started_step

    def progress(self) -> dict:
        t, pos = self.trainer, self.trainer.position
        done = pos.step - self.started_step
        elapsed = time.monotonic() - self.started_at
        eta = int((t.total_steps - pos.step) * elapsed / done) if done else None
        out = {"percent": int(100 * pos.step / max(1, t.total_steps)), "epoch": pos.epoch, "step": pos.step,
               "totalSteps": t.total_steps, "inputTokens": pos.tokens, "totalInputTokens": t.total_tokens}
        if eta is not None:
            out["etaSeconds"] = eta
        return out

    def flush(self) -> None:
        if not self.pending:
            return
        with self.w.factory() as s:
            runtime.owned_job(s, *self.w.key)
            for m in self.pending.values():
                s.merge(SftJobMetricRow(account_id=self.w.job.account_id, job_id=self.w.job.job_id, step=m.step,
                                        epoch=m.epoch, train_loss=m.train_loss, learning_rate=m.learning_rate,
                                        grad_norm=m.grad_norm, tokens=m.tokens,
                                        tokens_per_second=m.tokens_per_second, eval_loss=m.eval_loss))
            s.commit()
        self.pending.clear()
        self.last_flush = time.monotonic()

    def on_step(self, metrics, trainer) -> bool:
        log.info("step %d/%d done: loss %.4f, %d tokens, %.0f tokens/s", metrics.step, trainer.total_steps,
                 metrics.train_loss, metrics.tokens, metrics.tokens_per_second)
        self.pending[metrics.step] = metrics
        self.last_metrics = metrics
        _fault_pause("each-step", self.w.job.job_id)
        self.w.heartbeat.progress = self.progress()
        if time.monotonic() - self.last_flush >= METRICS_FLUSH_S:
            self.flush()
        if self.w.heartbeat.superseded:
            raise runtime.Superseded("superseded")
        return not self.w.heartbeat.stop_requested.is_set()

    def on_checkpoint(self, checkpoint, trainer) -> None:
        self.flush()
        self.w.save_checkpoint(checkpoint)
        if self.w.job.attempt == 1 and checkpoint.step == trainer.interval:
            _fault_pause("after-first-checkpoint", self.w.job.job_id)
        _fault_crash("crash-after-checkpoint", self.w.job.job_id, self.w.job.attempt)

    def on_epoch_end(self, epoch, eval_loss, trainer) -> None:
        if eval_loss is None:
            return
        m = getattr(self, "last_metrics", None)
        if m is not None:
            m.eval_loss = eval_loss
            self.pending[m.step] = m
        self.flush()
        self.w.event(runtime.EVAL, f"epoch {epoch + 1}: eval loss {eval_loss:.4f}",
                     data={"epoch": epoch + 1, "evalLoss": eval_loss})


class JobWorker:
    def __init__(self, settings: Settings, job: JobRef):
        self.settings, self.job = settings, job
        self.key = (job.account_id, job.job_id, job.attempt)
        self.engine = make_engine(settings.resolved_database_url)
        self.factory = make_session_factory(self.engine)
        self.blobs = BlobStore(settings.resolved_blob_url)
        self.cache_dir = Path(settings.home) / "cache" / "training-models"
        self.heartbeat = Heartbeat(self.factory, job)

    # ---- DB helpers (all fenced) ----

    def event(self, type_: str, message: str, *, level: str = runtime.INFO, data: dict | None = None) -> None:
        with self.factory() as s:
            runtime.owned_job(s, *self.key)
            runtime.add_event(s, self.job.account_id, self.job.job_id, type_, message, level=level, data=data)
            s.commit()

    def save_checkpoint(self, ckpt, output: dict[str, bytes] | None = None) -> None:
        prefix = store.checkpoint_prefix(self.job.account_id, self.job.job_id, ckpt.step)
        store.write_files(self.blobs, prefix, ckpt.files)
        if output:
            store.write_files(self.blobs, prefix, output, sub=store.OUTPUT)
        with self.factory() as s:
            runtime.owned_job(s, *self.key)
            s.merge(SftJobCheckpointRow(account_id=self.job.account_id, job_id=self.job.job_id, step=ckpt.step,
                                        epoch=ckpt.epoch, blob_prefix=prefix, is_final=ckpt.is_final,
                                        metrics=ckpt.metrics, create_time=utcnow()))
            runtime.add_event(s, self.job.account_id, self.job.job_id, runtime.CHECKPOINT,
                              f"{'final ' if ckpt.is_final else ''}checkpoint at step {ckpt.step}",
                              data={"step": ckpt.step, "epoch": ckpt.epoch, **ckpt.metrics})
            s.commit()

    def fail(self, message: str, code: str) -> None:
        with self.factory() as s:
            row = runtime.owned_job(s, *self.key)
            if row.state in (states.RUNNING, states.WRITING_RESULTS):
                states.transition(row, states.FAILED, message=message, code=code)
                runtime.add_event(s, row.account_id, row.job_id, runtime.STATE, f"{states.FAILED}: {message}",
                                  level=runtime.ERROR)
            s.commit()

    # ---- the run ----

    def run(self) -> int:
        with self.factory() as s:
            row = runtime.owned_job(s, *self.key)
            state = row.state
            s.expunge(row)
        self.row = row
        self.heartbeat.beat()
        self.heartbeat.start()
        try:
            if state == states.RUNNING:
                if not self.train():
                    return 0
            elif state != states.WRITING_RESULTS:
                return 0
            self.write_results()
            return 0
        except runtime.Superseded:
            log.info("job %s superseded; exiting", self.job.name)
            return 0
        except TrainingError as exc:
            self.fail(str(exc), "INVALID_ARGUMENT")
        except MemoryError:
            self.fail("out of memory while training: lower batchSize (tokens per micro-batch) or "
                      "maxContextLength", "RESOURCE_EXHAUSTED")
        except Exception as exc:
            import torch
            if isinstance(exc, torch.OutOfMemoryError):
                self.fail("out of GPU memory while training: lower batchSize (tokens per micro-batch) or "
                          "maxContextLength", "RESOURCE_EXHAUSTED")
            else:
                log.exception("training failed")
                self.fail(f"the trainer failed: {type(exc).__name__}: {str(exc)[:500]}", "INTERNAL")
        finally:
            self.heartbeat.close()
            self.engine.dispose()
        return 1

    def train(self) -> bool:
        """Train to the end (True) or until asked to stop (False)."""
        from fireplace.training.example_store import read_examples  # torch: imported after the first heartbeat
        from fireplace.training.trainer import Trainer

        row = self.row
        train_set = read_examples(self.blobs, row.account_id, row.job_id, "train")
        if train_set is None:
            raise TrainingError("the validated examples are missing from the blob store; resume the job")
        eval_set = read_examples(self.blobs, row.account_id, row.job_id, "eval")
        config = from_spec({**row.spec, "maxContextLength": row.validation.get("maxContextLength")
                            or row.spec.get("maxContextLength")})
        model_dir = local_model_dir(self.blobs, row.training_base_model, self.cache_dir)
        warm_dir = local_model_dir(self.blobs, row.warm_start_from, self.cache_dir) if row.warm_start_from else None
        with self.factory() as s:
            ckpt_row = runtime.latest_checkpoint(s, row.account_id, row.job_id)
        trainer = Trainer(config, model_dir, train_set, eval_set, warm_start_dir=warm_dir,
                          base_model_name=row.training_base_model)
        self.trainer = trainer
        if ckpt_row is not None:
            if ckpt_row.is_final:
                self._to_writing_results()
                return True
            trainer.restore(store.read_files(self.blobs, ckpt_row.blob_prefix, ["adapter_model.safetensors",
                                                                               "trainer_state.pt"]))
            with self.factory() as s:
                runtime.owned_job(s, *self.key)
                runtime.drop_metrics_after(s, row.account_id, row.job_id, ckpt_row.step)
                runtime.add_event(s, row.account_id, row.job_id, runtime.RESUME,
                                  f"resumed from the checkpoint at step {ckpt_row.step} of {trainer.total_steps}",
                                  data={"step": ckpt_row.step, "attempt": self.job.attempt})
                s.commit()
        else:
            self.event(runtime.STATE, f"training started: {len(train_set)} examples, {trainer.total_steps} steps "
                       f"over {config.epochs} epoch(s), a checkpoint every {trainer.interval} steps, on "
                       f"{trainer.device.type} ({str(trainer.dtype).replace('torch.', '')})",
                       data={"examples": len(train_set), "totalSteps": trainer.total_steps,
                             "checkpointIntervalSteps": trainer.interval, "targetModules": trainer.target_modules})
        hooks = JobHooks(self, trainer, trainer.position.step)
        self.heartbeat.progress = hooks.progress()
        result = trainer.run(hooks)
        hooks.flush()
        if result.stopped:
            return False
        final = trainer.checkpoint({"trainLoss": getattr(hooks, "last_metrics", None) and hooks.last_metrics.train_loss,
                                    "earlyStopped": result.early_stopped,
                                    "targetModules": trainer.target_modules,
                                    "r": int(trainer.model.peft_config["default"].r)}, is_final=True)
        if trainer.position.eval_losses:
            final.metrics["evalLoss"] = trainer.position.eval_losses[-1]
        self.save_checkpoint(final, output=trainer.adapter_files())
        if result.early_stopped:
            self.event(runtime.EVAL, f"early stop after epoch {trainer.position.epoch}: the eval loss did not improve")
        self.heartbeat.progress = {**hooks.progress(), "percent": 100}
        self._to_writing_results()
        return True

    def _to_writing_results(self) -> None:
        with self.factory() as s:
            row = runtime.owned_job(s, *self.key)
            if row.state == states.RUNNING:
                states.transition(row, states.WRITING_RESULTS, message="writing the output model")
                if self.heartbeat.progress is not None:
                    row.job_progress = dict(self.heartbeat.progress)
                runtime.add_event(s, row.account_id, row.job_id, runtime.STATE, states.WRITING_RESULTS)
            s.commit()

    def write_results(self) -> None:
        from fireplace.control.models.registry import register_model_files
        from fireplace.control.models.tables import KIND_ADDON, STATE_READY, ModelRow

        with self.factory() as s:
            ckpt = runtime.latest_checkpoint(s, self.job.account_id, self.job.job_id)
        if ckpt is None or not ckpt.is_final:
            raise TrainingError("no final checkpoint to write results from")
        out_account, out_id = split_model_name(self.row.output_model)
        with self.factory() as s:
            runtime.owned_job(s, *self.key)
            existing = s.get(ModelRow, (out_account, out_id))
            mine = existing is not None and (existing.spec or {}).get("fine_tuning_job") == self.job.name
            if existing is not None and not mine:
                raise TrainingError(f"outputModel {self.row.output_model!r} was created by someone else while the "
                                    "job ran; delete it and resume the job")
            if not (mine and existing.state == STATE_READY):
                files = store.read_files(self.blobs, ckpt.blob_prefix, OUTPUT_FILES, sub=store.OUTPUT)
                for name, data in files.items():
                    self.blobs.write_bytes(f"models/{out_account}/{out_id}/{name}", data)
                _fault_pause("before-register", self.job.job_id)
                cfg = json.loads(files["adapter_config.json"])
                targets = cfg.get("target_modules") or ckpt.metrics.get("targetModules") or []
                register_model_files(s, self.blobs, out_account, out_id, kind=KIND_ADDON,
                                     display_name=self.row.display_name or out_id,
                                     base_model=self.row.training_base_model, r=int(cfg.get("r") or 8),
                                     target_modules=sorted(targets) if isinstance(targets, list) else [targets],
                                     fine_tuning_job=self.job.name, created_by=self.row.created_by)
        with self.factory() as s:
            row = runtime.owned_job(s, *self.key)
            if row.state == states.WRITING_RESULTS:
                final = states.EARLY_STOPPED if ckpt.metrics.get("earlyStopped") else states.COMPLETED
                states.transition(row, final, message=f"output model {row.output_model} is READY")
                row.job_progress = {**(row.job_progress or {}), "percent": 100}
                runtime.add_event(s, row.account_id, row.job_id, runtime.OUTPUT,
                                  f"registered {row.output_model} (HF_PEFT_ADDON)", data={"model": row.output_model})
                runtime.add_event(s, row.account_id, row.job_id, runtime.STATE, final)
            s.commit()


def _fault_pause(point: str, job_id: str) -> None:
    """Fault-injection for crash tests: FIREPLACE_TRAINING_FAULT="<point>:<job id>:<seconds>[,...]"
    makes the worker of that one job sleep at that point (so a test can kill or cancel it
    there). Points: before-register, after-first-checkpoint (first attempt only), each-step."""
    for spec in os.environ.get("FIREPLACE_TRAINING_FAULT", "").split(","):
        parts = spec.split(":")
        if len(parts) == 3 and parts[0] == point and parts[1] == job_id:
            log.warning("fault injection: pausing %s s at %s", parts[2], point)
            time.sleep(float(parts[2]))


def _fault_crash(point: str, job_id: str, attempt: int) -> None:
    """Fault-injection for retry tests: "<point>:<job id>:<N>" in FIREPLACE_TRAINING_FAULT makes
    attempts 1..N of that job's worker die at that point (os._exit, as a crash would: no
    cleanup, no status written). Points: crash-after-checkpoint (after each checkpoint it saves)."""
    for spec in os.environ.get("FIREPLACE_TRAINING_FAULT", "").split(","):
        parts = spec.split(":")
        if len(parts) == 3 and parts[0] == point and parts[1] == job_id and attempt <= int(parts[2]):
            log.warning("fault injection: attempt %d crashes at %s", attempt, point)
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)


def run_worker(job_name: str, attempt: int, settings: Settings | None = None) -> int:
    parts = job_name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "supervisedFineTuningJobs":
        raise SystemExit(f"--job must be accounts/A/supervisedFineTuningJobs/J, got {job_name!r}")
    worker = JobWorker(settings or Settings(), JobRef(parts[1], parts[3], attempt))
    return worker.run()
