"""Hot-loaded LoRA addons on a real deployment: two random PEFT adapters of SmolLM2, uploaded
through the model upload flow, loaded into one deployment without a restart and called
concurrently with the base; each greedy answer equals PEFT's. Also: unload while requests run,
a merged deployment, a serverless addon only its account can call, and a client disconnect
that frees the replica's KV blocks."""
from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import openai
import pytest

from tests.conftest import new_account, sdk, stop_server
from tests.serving.serving_helpers import (SMOL, make_smol_adapter, openai_client, replica_rows, replica_stats,
                                           start_serving, upload_dir, wait_deployed, wait_deployment_ready, wait_for)

pytestmark = pytest.mark.slow
PROMPTS = [[{"role": "user", "content": "Name a color."}], [{"role": "user", "content": "Count to three."}]]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_serving(tmp_path_factory, "sqlite")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two adapters and PEFT's greedy answers (token ids) for each prompt: {name: (dir, [ids...])}."""
    import torch
    from transformers import AutoTokenizer

    from fireplace.catalog.smollm2 import ensure_smollm2
    base_dir = ensure_smollm2()
    tok = AutoTokenizer.from_pretrained(base_dir)
    out = {}
    for seed in (1, 2):
        path = tmp_path_factory.mktemp(f"smol-lora-{seed}")
        model = make_smol_adapter(base_dir, path, seed)
        answers = []
        for messages in PROMPTS:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
            with torch.no_grad():
                gen = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
            answers.append(gen[0, ids.shape[1]:].tolist())
        out[f"lora-{seed}"] = (path, answers)
        del model
    return out


@pytest.fixture(scope="module")
def deployment(server, adapters):
    """A deployment of SmolLM2 with addons enabled and both addons loaded."""
    client = sdk(server)
    names = {}
    for model_id, (path, _) in adapters.items():
        names[model_id] = upload_dir(server, model_id, path,
                                     {"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": SMOL}})
    client.deployments.create(base_model=SMOL, deployment_id="smol-addons", enable_addons=True)
    dep = f"accounts/{server.account_id}/deployments/smol-addons"
    early = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                       headers={"Authorization": f"Bearer {server.api_key}"},
                       json={"model": f"{SMOL}#{dep}", "messages": PROMPTS[0], "max_tokens": 2})
    assert early.status_code == 503 and early.headers["retry-after"], early.text  # no replica ready yet
    assert early.json()["error"]["type"] == "server_error"
    wait_deployment_ready(server, "smol-addons")
    for name in names.values():
        loaded = client.lora.load(model=name, deployment=dep)
        wait_deployed(server, loaded.name.split("/")[-1])
    return dep, names


def _greedy_ids(client, model: str, messages) -> list[int]:
    out = client.chat.completions.create(model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                         extra_body={"return_token_ids": True})
    return out.model_dump()["choices"][0]["token_ids"]


def test_addons_equal_peft_concurrently_with_base(server, adapters, deployment):
    dep, names = deployment
    client = openai_client(server)
    jobs = [(f"{names[m]}#{dep}", i, answers[i]) for m, (_, answers) in adapters.items() for i in range(len(PROMPTS))]
    jobs += [(f"{SMOL}#{dep}", i, None) for i in range(len(PROMPTS))]
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: _greedy_ids(client, j[0], PROMPTS[j[1]]), jobs))
    for (model, i, expected), got in zip(jobs, results):
        if expected is not None:
            assert got == expected[:len(got)] and len(got) > 0, (model, i, got, expected)
    base = [r for (m, _, e), r in zip(jobs, results) if e is None]
    addon = [r for (m, _, e), r in zip(jobs, results) if e is not None]
    assert all(b not in addon for b in base)  # the addons really change the answers
    # the bare addon name routes to its default deployment (the first it was loaded into)
    assert _greedy_ids(client, names["lora-1"], PROMPTS[0]) == adapters["lora-1"][1][0][:MAX_TOKENS]


def test_unload_while_requests_run(server, deployment):
    dep, names = deployment
    client = openai_client(server)
    fw = sdk(server)
    loaded = {m.model: m.name.split("/")[-1] for m in fw.lora.list()}
    target = names["lora-2"]

    def long_call():
        return client.chat.completions.create(model=f"{target}#{dep}", messages=PROMPTS[0], max_tokens=32,
                                              temperature=0, extra_body={"ignore_eos": True})
    with cf.ThreadPoolExecutor(2) as pool:
        running = pool.submit(long_call)
        time.sleep(1.0)
        fw.lora.unload(loaded[target])
        finished = running.result(timeout=300)  # the request in flight finishes on the addon
    assert finished.usage.completion_tokens == 32
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"{target}#{dep}", messages=PROMPTS[0], max_tokens=2)
    wait_for(lambda: all(target not in json.loads(r["adapters"]) for r in replica_rows(server, dep)), 60,
             what="addon unloaded from the replica")
    # the other addon is untouched
    assert _greedy_ids(client, f"{names['lora-1']}#{dep}", PROMPTS[1])


def test_disconnect_frees_kv_blocks(server, deployment):
    dep, _ = deployment
    row = wait_for(lambda: next((r for r in replica_rows(server, dep) if r["state"] == "READY"), None), 60)
    baseline = replica_stats(row)
    body = {"model": f"{SMOL}#{dep}", "messages": PROMPTS[0], "max_tokens": 1000, "temperature": 0,
            "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=120) as c:
        with c.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {server.api_key}"}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept referenced: a dropped iterator would close the stream now
            first = [next(lines) for _ in range(7)]
            running = replica_stats(row)
            assert running["num_running"] >= 1 and running["kv_blocks_used"] > baseline["kv_blocks_used"], \
                (running, first)
    stats = wait_for(lambda: (lambda s: s if s["num_running"] == 0 else None)(replica_stats(row)), 30,
                     what="the aborted request to leave the replica")
    assert stats["kv_blocks_used"] <= baseline["kv_blocks_used"] + 0 or stats["num_running"] == 0
    assert stats["generation_tokens_total"] < 900 if "generation_tokens_total" in stats else True


def test_replica_refuses_callers_without_its_secret(server, deployment):
    """A process on this machine that finds the replica's port but not its secret gets 401 on
    every route, streaming generation included; the secret the server holds works."""
    dep, _ = deployment
    row = wait_for(lambda: next((r for r in replica_rows(server, dep) if r["state"] == "READY"), None), 60)
    body = {"model": f"{SMOL}#{dep}", "messages": PROMPTS[0], "max_tokens": 2, "stream": True}
    with httpx.Client(base_url=row["address"], timeout=60) as c:
        for headers in ({}, {"x-fireplace-replica-secret": "guess"},
                        {"x-fireplace-replica-secret": row["secret"][:-1]}):
            assert c.get("/internal/stats", headers=headers).status_code == 401
            refused = c.post("/v1/chat/completions", json=body, headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["message"], refused.text
        with c.stream("POST", "/v1/chat/completions", json=body,
                      headers={"x-fireplace-replica-secret": row["secret"]}) as r:
            assert r.status_code == 200 and "data: [DONE]" in r.read().decode()


def test_merged_deployment(server, adapters, deployment):
    _, names = deployment
    client = sdk(server)
    client.deployments.create(base_model=names["lora-1"], deployment_id="smol-merged")
    wait_deployment_ready(server, "smol-merged")
    dep = f"accounts/{server.account_id}/deployments/smol-merged"
    got = _greedy_ids(openai_client(server), f"{names['lora-1']}#{dep}", PROMPTS[1])
    assert got == adapters["lora-1"][1][1][:len(got)]
    client.deployments.delete("smol-merged", hard=True)


def test_serverless_addon_only_for_its_account(server, adapters):
    account, key = new_account(server)
    _, other_key = new_account(server)
    path, answers = adapters["lora-2"]
    name = upload_dir(server, "my-addon", path, {"kind": "HF_PEFT_ADDON", "peftDetails": {"baseModel": SMOL}},
                      api_key=key, account_id=account)
    mine = sdk(server, key, account)
    loaded = mine.lora.load(model=name, deployment="accounts/fireplace/deployments/smollm2-135m-instruct")
    wait_deployed(server, loaded.name.split("/")[-1], api_key=key, account_id=account)
    got = _greedy_ids(openai_client(server, key), name, PROMPTS[0])
    assert got == answers[0][:len(got)]
    with pytest.raises(openai.NotFoundError):
        openai_client(server, other_key).chat.completions.create(model=name, messages=PROMPTS[0], max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        openai_client(server, other_key).chat.completions.create(
            model=f"{name}#accounts/fireplace/deployments/smollm2-135m-instruct", messages=PROMPTS[0], max_tokens=2)
