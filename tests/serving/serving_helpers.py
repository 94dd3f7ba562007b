"""Shared by the serving tests: a real `fireplace serve` with the bundled SmolLM2 imported and
its serverless deployment served by a real replica process, plus PEFT adapters for it."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from tests.conftest import sdk, start_server
from tests.servers import Server

SMOL = "accounts/fireplace/models/smollm2-135m-instruct"
SERVING_ENV = {"FIREPLACE_IMPORT_CATALOG": "true", "FIREPLACE_SERVING_LOCAL_REPLICA_SLOTS": "3",
               "FIREPLACE_SERVING_REPLICA_KV_CACHE_MB": "96", "FIREPLACE_SERVING_RECONCILE_INTERVAL_S": "0.5"}


def start_serving(tmp_path_factory, backend: str = "sqlite", **env) -> Server:
    """Returns once /readyz is ready: the bundled model's serverless deployment serves."""
    return start_server(tmp_path_factory, backend, extra_env={**SERVING_ENV, **env}, timeout=300)


def openai_client(server: Server, api_key: str | None = None):
    from openai import OpenAI
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key or server.api_key, max_retries=0, timeout=600)


def wait_for(predicate, timeout: float = 180, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def wait_deployment_ready(server: Server, deployment_id: str, timeout: float = 240, account_id: str | None = None):
    client = sdk(server, account_id=account_id)

    def ready():
        d = client.deployments.get(deployment_id)
        if d.state == "FAILED":
            raise AssertionError(f"deployment failed: {d.status}")
        return d if d.state == "READY" else None
    return wait_for(ready, timeout, what=f"deployment {deployment_id} READY")


def wait_deployed(server: Server, deployed_model_id: str, timeout: float = 120, api_key: str | None = None,
                  account_id: str | None = None):
    with httpx.Client(base_url=server.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {api_key or server.api_key}"}) as c:
        def deployed():
            r = c.get(f"/v1/accounts/{account_id or server.account_id}/deployedModels/{deployed_model_id}")
            body = r.json()
            return body if body.get("state") == "DEPLOYED" else None
        return wait_for(deployed, timeout, what=f"deployed model {deployed_model_id} DEPLOYED")


def replica_rows(server: Server, deployment: str) -> list[dict]:
    """The controller's published replicas (address + secret) of a deployment, from the DB."""
    if server.database_url:
        import psycopg
        with psycopg.connect(server.database_url) as conn:
            cur = conn.execute("SELECT replica_id, address, secret, state, adapters FROM replicas "
                               "WHERE deployment = %s", (deployment,))
            rows = cur.fetchall()
    else:
        with sqlite3.connect(Path(server.home) / "fireplace.db") as conn:
            rows = conn.execute("SELECT replica_id, address, secret, state, adapters FROM replicas "
                                "WHERE deployment = ?", (deployment,)).fetchall()
    return [dict(zip(("replica_id", "address", "secret", "state", "adapters"), r)) for r in rows]


def replica_stats(row: dict) -> dict:
    r = httpx.get(f"{row['address']}/internal/stats", headers={"x-fireplace-replica-secret": row["secret"]},
                  timeout=10)
    r.raise_for_status()
    return r.json()


def make_smol_adapter(base_dir: Path, out_dir: Path, seed: int, r: int = 8):
    """A random PEFT LoRA of SmolLM2 (all attention + MLP projections); returns the PeftModel."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return model.eval()


def upload_dir(server: Server, model_id: str, directory: Path, model: dict, *, api_key=None, account_id=None) -> str:
    from tests.control.helpers_resources import upload_model
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir())
             if p.is_file() and p.name in ("adapter_config.json", "adapter_model.safetensors")}
    return upload_model(server, model_id, files, model, api_key=api_key, account_id=account_id)
