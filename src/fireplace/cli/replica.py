"""`fireplace replica`: one engine behind the internal replica API (started by the controller)."""
from __future__ import annotations

import os
from typing import Optional

import typer


def replica(
    replica_id: str = typer.Option(..., help="This replica's ID (reported in stats)."),
    model: str = typer.Option(..., help="Full name of the base model: accounts/A/models/M."),
    blob_url: str = typer.Option(..., help="The blob store holding the model files."),
    cache_dir: str = typer.Option(..., help="Local directory for model files copied from a remote store."),
    port: int = typer.Option(..., help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    task: str = typer.Option("generate", help="generate | embed"),
    merged_adapter: Optional[str] = typer.Option(None, help="Full name of an addon to merge into the base."),
    enable_lora: bool = typer.Option(False, "--enable-lora/--no-enable-lora", help="Serve LoRA addons."),
    max_loras: int = typer.Option(8, help="Addons in compute memory at once."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16 (CUDA)."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
    quantization: Optional[str] = typer.Option(None, help="Weight-only quantization on CPU: int8 | int4."),
    kv_cache_mb: int = typer.Option(256, help="KV cache memory in MiB."),
    max_num_seqs: int = typer.Option(64, help="Sequences in one batch at most."),
    max_model_len: Optional[int] = typer.Option(None, help="Context length cap."),
    threads: Optional[int] = typer.Option(None, help="torch threads (CPU)."),
    chat_template_file: Optional[str] = typer.Option(None, help="A Jinja chat template overriding the model's."),
) -> None:
    """Serve one model on the internal replica API (needs FIREPLACE_REPLICA_SECRET)."""
    import uvicorn

    from fireplace.orchestration.parent_watch import watch_parent
    from fireplace.serving.replica_app import create_replica_app
    from fireplace.serving.replica_config import ReplicaConfig

    secret = os.environ.get("FIREPLACE_REPLICA_SECRET", "")
    if len(secret) < 16:
        raise typer.BadParameter("FIREPLACE_REPLICA_SECRET (at least 16 characters) must be set")
    if not device.startswith("cuda"):
        from fireplace.engine import host_allocator
        host_allocator.tune()  # before uvicorn starts threads (M_ARENA_MAX applies to new ones)
    watch_parent()
    template = open(chat_template_file).read() if chat_template_file else None
    config = ReplicaConfig(replica_id=replica_id, model=model, blob_url=blob_url, cache_dir=cache_dir, task=task,
                           merged_adapter=merged_adapter, enable_lora=enable_lora, max_loras=max_loras, dtype=dtype,
                           device=device, quantization=quantization, kv_cache_bytes=kv_cache_mb << 20, max_num_seqs=max_num_seqs,
                           max_model_len=max_model_len, num_threads=threads, chat_template=template)
    uvicorn.run(create_replica_app(config, secret), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
