"""Make READY models and datasets through the public flow, for tests of the resources that
need them (deployments, deployed models, fine-tuning jobs, inference).

Weights are real: a tiny random Llama saved by transformers and a LoRA adapter of it saved
by peft (built once per test process, then only their bytes are reused), uploaded with
create -> :getUploadEndpoint -> PUT -> :validateUpload. Datasets are a 3-line CHAT JSONL
uploaded with the SDK's datasets.upload.
"""
from __future__ import annotations

import functools
import json
import tempfile
import uuid
from pathlib import Path

import fireworks
import httpx
import pytest

from tests.conftest import sdk
from tests.servers import Server

CHAT_LINES = [
    {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris"}]},
    {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi", "weight": 1}]},
]


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    import torch

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg)


def _read_dir(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@functools.lru_cache(maxsize=1)
def tiny_base_files() -> dict[str, bytes]:
    """config.json + model.safetensors (+ generation_config.json) of a ~10k-parameter Llama."""
    with tempfile.TemporaryDirectory() as tmp:
        _tiny_llama().save_pretrained(tmp, safe_serialization=True)
        return _read_dir(Path(tmp))


@functools.lru_cache(maxsize=4)
def tiny_addon_files(r: int = 4) -> dict[str, bytes]:
    """adapter_config.json + adapter_model.safetensors of a LoRA (rank r) on the tiny Llama."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_tiny_llama(), LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        files = _read_dir(Path(tmp))
    return {k: v for k, v in files.items() if k in ("adapter_config.json", "adapter_model.safetensors")}


def upload_model(server: Server, model_id: str, files: dict[str, bytes], model: dict, *,
                 api_key: str | None = None, account_id: str | None = None) -> str:
    """Create a model, upload its files and validate it; returns its full name (READY)."""
    client = sdk(server, api_key, account_id)
    client.models.create(model_id=model_id, model=model)
    urls = client.models.get_upload_endpoint(
        model_id, filename_to_size={k: str(len(v)) for k, v in files.items()}).filename_to_signed_urls
    for filename, data in files.items():
        r = httpx.put(urls[filename], content=data, headers={"content-type": "application/octet-stream"},
                      timeout=60)
        assert r.status_code == 200, r.text
    client.models.validate_upload(model_id)
    name = f"accounts/{account_id or server.account_id}/models/{model_id}"
    assert client.models.get(model_id).state == "READY"
    return name


def ready_base_model(server: Server, model_id: str | None = None, **kw) -> str:
    model_id = model_id or f"base-{uuid.uuid4().hex[:8]}"
    return upload_model(server, model_id, tiny_base_files(), {"kind": "HF_BASE_MODEL"}, **kw)


def ready_addon(server: Server, base_model: str, model_id: str | None = None, r: int = 4, **kw) -> str:
    model_id = model_id or f"lora-{uuid.uuid4().hex[:8]}"
    return upload_model(server, model_id, tiny_addon_files(r),
                        {"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": base_model}}, **kw)


def uploading_model(server: Server, model_id: str | None = None, *, base_model: str | None = None, **kw) -> str:
    """A model created but never uploaded (state UPLOADING): an addon of base_model when given."""
    model_id = model_id or f"up-{uuid.uuid4().hex[:8]}"
    model = ({"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": base_model}} if base_model
             else {"kind": "HF_BASE_MODEL"})
    sdk(server, kw.get("api_key"), kw.get("account_id")).models.create(model_id=model_id, model=model)
    return f"accounts/{kw.get('account_id') or server.account_id}/models/{model_id}"


def chat_jsonl(lines: list[dict] | None = None) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in (lines or CHAT_LINES)).encode()


def ready_dataset(server: Server, dataset_id: str | None = None, *, api_key: str | None = None,
                  account_id: str | None = None, content: bytes | None = None) -> str:
    """A CHAT dataset created and uploaded with the SDK; returns its full name (READY)."""
    dataset_id = dataset_id or f"ds-{uuid.uuid4().hex[:8]}"
    client = sdk(server, api_key, account_id)
    client.datasets.create(dataset_id=dataset_id, dataset={"userUploaded": {}, "format": "CHAT"})
    client.datasets.upload(dataset_id, file=("train.jsonl", content or chat_jsonl(), "application/jsonl"))
    assert client.datasets.get(dataset_id).state == "READY"
    return f"accounts/{account_id or server.account_id}/datasets/{dataset_id}"


def uploading_dataset(server: Server, dataset_id: str | None = None, *, api_key: str | None = None,
                      account_id: str | None = None) -> str:
    """A dataset created but never uploaded (state UPLOADING)."""
    dataset_id = dataset_id or f"ds-{uuid.uuid4().hex[:8]}"
    sdk(server, api_key, account_id).datasets.create(dataset_id=dataset_id,
                                                     dataset={"userUploaded": {}, "format": "CHAT"})
    return f"accounts/{account_id or server.account_id}/datasets/{dataset_id}"


def expect_error(status: int, code: int, call, *args, **kwargs) -> fireworks.APIStatusError:
    """Run an SDK call that must fail with this HTTP status and gRPC code in the body."""
    with pytest.raises(fireworks.APIStatusError) as info:
        call(*args, **kwargs)
    err = info.value
    assert err.status_code == status, (err.status_code, err.body)
    assert isinstance(err.body, dict) and err.body.get("code") == code, err.body
    assert isinstance(err.body.get("message"), str) and isinstance(err.body.get("details"), list)
    return err
