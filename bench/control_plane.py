"""Control-plane throughput and latency, beside the framework's floor, in one run.

32 concurrent clients (one asyncio httpx client each, keep-alive) hit, for a fixed time each:
  floor   a bare FastAPI app in its own uvicorn process returning a constant (what the
          framework costs before any of our code runs)
  get     GET  /v1/accounts/{a}/models/{m}            (auth + one row)
  list    GET  /v1/accounts/{a}/models?pageSize=50    (auth + filterable page)
  create  POST /v1/accounts/{a}/datasets              (auth + quota + durable insert)
on SQLite and on PostgreSQL. Prints req/s, p50, p99 and the ratio of p99 to the floor's p99,
and writes bench/results/control_plane.json. Aim: p99 of get within 3x the floor.

    .venv/bin/python bench/control_plane.py [--seconds 5] [--clients 32]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import Server, create_pg_database, drop_pg_database, free_port, postgres_available  # noqa: E402

KEY = "fw_bench_admin_key_0123456789abcdefghijklmnop"

FLOOR_APP = textwrap.dedent("""
    import sys, uvicorn
    from fastapi import FastAPI
    app = FastAPI()
    @app.get("/const")
    def const():
        return {"name": "accounts/a/models/m", "state": "READY"}
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
""")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def load(base_url: str, make_request, seconds: float, clients: int, headers: dict) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int):
        nonlocal errors
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
            n = 0
            while time.perf_counter() < deadline:
                method, url, body = make_request(i, n)
                t0 = time.perf_counter()
                r = await client.request(method, url, json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code >= 400:
                    errors += 1
                n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": errors, "req_per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 0.50) * 1e3, "p99_ms": percentile(latencies, 0.99) * 1e3,
            "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else float("nan")}


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def seed(server: Server) -> str:
    """A READY-or-not model to GET and 60 models to page through; returns one model id."""
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        for i in range(60):
            r = c.post(f"/v1/accounts/{server.account_id}/models",
                       json={"modelId": f"bench-model-{i}", "model": {"kind": "HF_BASE_MODEL", "displayName": f"m{i}"}})
            r.raise_for_status()
    return "bench-model-7"


def bench_fireplace(backend: str, seconds: float, clients: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"fp-bench-{backend}-"))
    db_url = create_pg_database() if backend == "postgres" else None
    server = Server(home=home, backend=backend, api_key=KEY, database_url=db_url).start()
    try:
        model_id = seed(server)
        acc = server.account_id
        headers = {"Authorization": f"Bearer {KEY}"}
        run_tag = uuid.uuid4().hex[:6]
        ops = {
            "get": lambda i, n: ("GET", f"/v1/accounts/{acc}/models/{model_id}", None),
            "list": lambda i, n: ("GET", f"/v1/accounts/{acc}/models?pageSize=50", None),
            "create": lambda i, n: ("POST", f"/v1/accounts/{acc}/datasets",
                                    {"datasetId": f"d{run_tag}-{i}-{n}", "dataset": {"userUploaded": {}}}),
        }
        results = {}
        for op, make in ops.items():
            results[op] = asyncio.run(load(server.base_url, make, seconds, clients, headers))
        return results
    finally:
        server.stop()
        if db_url:
            drop_pg_database(db_url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()

    port = free_port()
    floor_proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port)])
    try:
        wait_ready(f"http://127.0.0.1:{port}/const")
        floor = asyncio.run(load(f"http://127.0.0.1:{port}", lambda i, n: ("GET", "/const", None),
                                 args.seconds, args.clients, {}))
    finally:
        floor_proc.terminate()
        floor_proc.wait()

    backends = ["sqlite"] + (["postgres"] if postgres_available() else [])
    rows = {"floor": {"const": floor}}
    for backend in backends:
        rows[backend] = bench_fireplace(backend, args.seconds, args.clients)

    print(f"\n{args.clients} concurrent clients, {args.seconds:.0f} s per row, {os.cpu_count()} cores\n")
    print(f"{'backend':<10}{'op':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99/floor':>11}{'errors':>8}")
    for backend, ops in rows.items():
        for op, r in ops.items():
            ratio = r["p99_ms"] / floor["p99_ms"]
            r["p99_ratio_to_floor"] = round(ratio, 2)
            print(f"{backend:<10}{op:<8}{r['req_per_s']:>9.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                  f"{ratio:>10.2f}x{r['errors']:>8}")
    out = {"benchmark": "control_plane", "clients": args.clients, "seconds_per_row": args.seconds,
           "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                       # shared machine: other work's load skews every row alike (the floor too)
                       "load_average_1m_at_end": round(os.getloadavg()[0], 1)},
           "aim": "p99 of get within 3x the floor", "results": rows,
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = ROOT / "bench" / "results" / "control_plane.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
