"""Fault trials: a fine-tuning worker killed with SIGKILL at a random moment, N times.

Against a real `fireplace serve` (SQLite, its controller and local executor), on the tiny
random-weight Llama (tests/training/tiny_model.py): one uninterrupted reference job, then N
jobs with the same data, seed and hyperparameters, each worker killed once. The kill moment
alternates between two draws, because on this tiny model most of a worker's time is start-up
(imports, model loading), so a moment uniform over time rarely lands mid-training:
  - "time": uniform over the reference worker's start-up (RUNNING to its first step done:
    imports, model loading, the first step);
  - "step": right after the worker logs step k done, k uniform over 1..total steps (k = total
    lands in the final checkpoint / WRITING_RESULTS), watched in the worker's own log. Per trial: did it complete, how many steps
the killed worker had finished past the checkpoint it resumed from (steps redone, read from
the killed worker's own log), and whether the final adapter equals the reference's
(max |difference| over all tensors; bitwise equality counted too).

    nice -n 10 .venv/bin/python bench/finetune_faults.py --trials 20 --out bench/results/finetune-faults.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ADMIN_KEY, sdk  # noqa: E402
from tests.servers import Server  # noqa: E402
from tests.training.helpers import chat_lines, dataset, job_id_of, tiny_base  # noqa: E402

JOB = dict(epochs=2, batch_size=64, learning_rate=3e-3, lora_rank=4)
EXTRA = {"checkpointIntervalSteps": 4, "seed": 5}
STEP_RE = re.compile(r"step (\d+)/(\d+) done")


def wait_state(client, job_id: str, states: set[str], timeout: float = 900) -> object:
    deadline = time.monotonic() + timeout
    while True:
        job = client.supervised_fine_tuning_jobs.get(job_id)
        if job.state in states:
            return job
        if job.state in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def worker_pids(job_name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"train" in argv and job_name.encode() in argv:
                pids.append(int(entry.name))
    return pids


def adapter(server: Server, job) -> dict:
    from safetensors.torch import load_file
    _, account, _, model = job.output_model.split("/")
    return load_file(str(server.home / "blobs" / "models" / account / model / "adapter_model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def worker_process_id(db: Path, job_id: str) -> str | None:
    with sqlite3.connect(db) as conn:
        (process_id,) = conn.execute("select worker_process_id from supervised_fine_tuning_jobs where job_id=?",
                                     (job_id,)).fetchone()
    return process_id


def wait_logged_step(server: Server, db: Path, job_id: str, step: int, timeout: float = 600) -> None:
    """Until the worker's log says step `step` is done (polled every 10 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process_id = worker_process_id(db, job_id)
        if process_id:
            path = server.home / "logs" / f"{process_id}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            if max((int(m.group(1)) for m in STEP_RE.finditer(text)), default=0) >= step:
                return
        time.sleep(0.01)


def trial(server: Server, client, base: str, data: str, moment: tuple[str, float], db: Path) -> dict:
    job = client.supervised_fine_tuning_jobs.create(dataset=data, base_model=base, **JOB, extra_body=EXTRA)
    job_id = job_id_of(job)
    wait_state(client, job_id, {"JOB_STATE_RUNNING", "JOB_STATE_WRITING_RESULTS", "JOB_STATE_COMPLETED"})
    kind, value = moment
    if kind == "time":
        time.sleep(value)
    else:
        wait_logged_step(server, db, job_id, int(value))
    process_id = worker_process_id(db, job_id)
    state_at_kill = client.supervised_fine_tuning_jobs.get(job_id).state
    killed = 0
    for pid in worker_pids(job.name):
        os.kill(pid, signal.SIGKILL)
        killed += 1
    done = wait_state(client, job_id, {"JOB_STATE_COMPLETED"})
    log = (server.home / "logs" / f"{process_id}.log").read_text(errors="replace") if process_id else ""
    steps = [int(m.group(1)) for m in STEP_RE.finditer(log)]
    with sqlite3.connect(db) as conn:
        resumes = [json.loads(d) for (d,) in conn.execute(
            "select data from sft_job_events where job_id=? and type='RESUME'", (job_id,))]
        restarts = conn.execute("select count(*) from sft_job_events where job_id=? and type='RESTART'",
                                (job_id,)).fetchone()[0]
    resumed_from = max((r.get("step", 0) for r in resumes if "attempt" in r), default=0)  # 0: from the start
    last_step = max(steps, default=0)
    return {"job": job_id, "kill_at": kind, "kill_delay_s" if kind == "time" else "kill_after_step":
            round(value, 3), "state_at_kill": state_at_kill, "killed_processes": killed,
            "final_state": done.state, "completed": done.state == "JOB_STATE_COMPLETED",
            "killed_worker_last_step": last_step, "resumed_from_step": resumed_from,
            "steps_redone": max(0, last_step - resumed_from) if restarts else 0,
            "restarts": restarts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=3, help="trials at once (each its own job and worker)")
    p.add_argument("--out", default="bench/results/finetune-faults.json")
    args = p.parse_args()
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="fp-faults-"))
    server = Server(home=home, backend="sqlite", api_key=ADMIN_KEY,
                    extra_env={"FIREPLACE_SERVING_RECONCILE_INTERVAL_S": "0.5",
                               "FIREPLACE_SERVING_LOCAL_TRAINER_SLOTS": str(args.parallel)}).start(timeout=300)
    try:
        client = sdk(server)
        base = tiny_base(server)
        data = dataset(server, chat_lines(24))
        started = time.monotonic()
        ref_job = client.supervised_fine_tuning_jobs.create(dataset=data, base_model=base, **JOB, extra_body=EXTRA)
        wait_state(client, job_id_of(ref_job), {"JOB_STATE_RUNNING"})
        running_at = time.monotonic()
        wait_logged_step(server, home / "fireplace.db", job_id_of(ref_job), 1)
        startup_s = time.monotonic() - running_at
        ref_job = wait_state(client, job_id_of(ref_job), {"JOB_STATE_COMPLETED"})
        run_s = time.monotonic() - running_at
        assert ref_job.state == "JOB_STATE_COMPLETED", ref_job.status
        reference = adapter(server, ref_job)
        total_steps = ref_job.job_progress.model_extra["totalSteps"]
        print(f"reference: {total_steps} steps, {run_s:.1f} s running of which {startup_s:.1f} s to the first "
              f"step ({time.monotonic() - started:.1f} s in all)", flush=True)
        moments = [("time", rng.uniform(0.0, startup_s)) if i % 2 == 0 else ("step", rng.randint(1, total_steps))
                   for i in range(args.trials)]

        def one(moment: tuple[str, float]) -> dict:
            result = trial(server, client, base, data, moment, home / "fireplace.db")
            if result["completed"]:
                got = adapter(server, client.supervised_fine_tuning_jobs.get(result["job"]))
                result["max_abs_diff"] = max_diff(got, reference)
                result["bitwise_equal"] = all(bool((got[k] == reference[k]).all()) for k in reference)
            print(json.dumps(result), flush=True)
            return result
        with ThreadPoolExecutor(args.parallel) as pool:
            trials = list(pool.map(one, moments))
    finally:
        server.stop()
    completed = [t for t in trials if t["completed"]]
    summary = {
        "trials": len(trials), "completed": len(completed),
        "equal_within_1e-5": sum(1 for t in completed if t["max_abs_diff"] <= 1e-5),
        "bitwise_equal": sum(1 for t in completed if t["bitwise_equal"]),
        "steps_redone": [t["steps_redone"] for t in trials],
        "max_steps_redone": max((t["steps_redone"] for t in trials), default=0),
        "checkpoint_interval_steps": EXTRA["checkpointIntervalSteps"],
        "killed_mid_training": sum(1 for t in trials if 0 < t["killed_worker_last_step"] < total_steps),
        "killed_in_state": {s: sum(1 for t in trials if t["state_at_kill"] == s)
                            for s in sorted({t["state_at_kill"] for t in trials})},
    }
    report = {"benchmark": "finetune-faults", "model": "tiny random Llama (2 layers, hidden 64), CPU fp32",
              "job": {**JOB, **EXTRA, "examples": 24, "total_steps": total_steps},
              "reference_running_s": run_s, "reference_startup_s": startup_s, "parallel_trials": args.parallel, "load_average_at_end": os.getloadavg(), "summary": summary,
              "trials": trials}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
