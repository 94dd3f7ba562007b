"""The OpenAI-compatible gateway against a real `fireplace serve` and real replica processes
serving the bundled SmolLM2 and all-MiniLM-L6-v2 (their public serverless deployments), through
the official `openai` and `fireworks-ai` SDKs, on SQLite and PostgreSQL: chat, completions,
streaming, structured output, embeddings, errors."""
from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import BACKENDS, new_account, sdk, stop_server, user_key
from tests.serving.serving_helpers import SMOL, openai_client, start_serving

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    srv = start_serving(tmp_path_factory, request.param)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def test_chat_greedy_and_stream_agree(client):
    answer = client.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=24, temperature=0)
    text = answer.choices[0].message.content
    assert "Paris" in text
    assert answer.object == "chat.completion" and answer.model == SMOL
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    streamed, usage = "", None
    for chunk in client.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=24, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            streamed += chunk.choices[0].delta.content or ""
        else:
            usage = chunk.usage
    assert streamed == text
    assert usage is not None and usage.completion_tokens == answer.usage.completion_tokens


def test_completions_n_logprobs_stop_echo(client):
    out = client.completions.create(model=SMOL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, logprobs=2,
                                    stop=["8"])
    choice = out.choices[0]
    assert "8" not in choice.text and choice.finish_reason == "stop"
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) > 0
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    many = client.completions.create(model=SMOL, prompt="Once upon a time", max_tokens=8, temperature=1.0, n=3,
                                     seed=7)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    again = client.completions.create(model=SMOL, prompt="Once upon a time", max_tokens=8, temperature=1.0, n=3,
                                      seed=7)
    assert [c.text for c in many.choices] == [c.text for c in again.choices]  # seed reproducibility
    echoed = client.completions.create(model=SMOL, prompt="Hello", max_tokens=2, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("Hello")


def test_chat_logprobs_and_fireworks_extras(client):
    out = client.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True,
                                         top_logprobs=3, extra_body={"top_k": 5, "min_p": 0.05,
                                                                     "repetition_penalty": 1.1,
                                                                     "perf_metrics_in_response": True,
                                                                     "return_token_ids": True})
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 for t in content)
    extra = out.model_dump()
    assert extra["perf_metrics"]["completion-tokens"] == out.usage.completion_tokens
    assert len(extra["choices"][0]["token_ids"]) == out.usage.completion_tokens


def test_fireworks_sdk_chat_and_inference_prefix(server):
    fw = sdk(server)
    out = fw.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=12, temperature=0)
    assert "Paris" in out.choices[0].message.content
    r = httpx.post(f"{server.base_url}/inference/v1/completions", timeout=120,
                   headers={"Authorization": f"Bearer {server.api_key}"},
                   json={"model": SMOL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id")


def test_every_role_and_account_can_call_serverless(server):
    _, other_key = new_account(server)
    inference_key = user_key(server, "inference-user")
    for key in (other_key, inference_key):
        out = openai_client(server, key).chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=4,
                                                                 temperature=0)
        assert out.choices[0].message.content
    models = [m.id for m in openai_client(server, other_key).models.list().data]
    assert SMOL in models


def test_errors_in_openai_shape(server, client):
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, "fw_wrong_key_00000000000000000000").chat.completions.create(
            model=SMOL, messages=QUESTION)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="accounts/fireplace/models/no-such-model", messages=QUESTION)
    assert info.value.body["type"] == "invalid_request_error" and info.value.body["param"] == "model"
    cases = [({"temperature": 5}, "temperature"), ({"max_tokens": "many"}, "max_tokens"),
             ({"top_logprobs": 2}, "top_logprobs"), ({"n": 0}, "n"),
             ({"context_length_exceeded_behavior": "explode"}, "context_length_exceeded_behavior")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=SMOL, messages=QUESTION, extra_body=extra)
        assert info.value.body["param"] == param, (extra, info.value.body)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=SMOL, messages=[{"role": "wizard", "content": "x"}])
    assert info.value.body["param"] == "messages[0].role"
    r = httpx.post(f"{server.base_url}/v1/chat/completions", content=b"{not json",
                   headers={"Authorization": f"Bearer {server.api_key}"}, timeout=30)
    assert r.status_code == 400 and "error" in r.json()


def test_context_length_behaviour(client):
    long_prompt = "word " * 3000
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=SMOL, prompt=long_prompt, max_tokens=2000)
    out = client.completions.create(model=SMOL, prompt=long_prompt, max_tokens=4, temperature=0,
                                    extra_body={"prompt_truncate_len": 64})
    assert out.usage.prompt_tokens == 64


MINILM = "accounts/fireplace/models/all-minilm-l6-v2"
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}


def test_json_schema_output_validates(client):
    out = client.chat.completions.create(
        model=SMOL, temperature=0, max_tokens=60,
        messages=[{"role": "user", "content": "Describe a person called Ann who is 31."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    value = json.loads(out.choices[0].message.content)
    jsonschema.validate(value, PERSON)
    obj = client.chat.completions.create(model=SMOL, temperature=0, max_tokens=60,
                                         messages=[{"role": "user", "content": "Give me a JSON object."}],
                                         response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "bad", "schema": {"type": 12}}})
    assert info.value.body["param"] == "response_format"


def test_embeddings_float_base64_batch(client):
    texts = ["A cat sits on the mat.", "Fireplace serves LoRA addons.", "Paris is in France."]
    out = client.embeddings.create(model=MINILM, input=texts)
    assert [d.index for d in out.data] == [0, 1, 2]
    for d in out.data:
        assert len(d.embedding) == 384
        assert math.isclose(sum(x * x for x in d.embedding), 1.0, rel_tol=1e-5)
    assert out.usage.prompt_tokens > 0
    raw = client.embeddings.with_raw_response.create(model=MINILM, input=texts[0], encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{384}f", base64.b64decode(encoded))
    assert max(abs(a - b) for a, b in zip(decoded, out.data[0].embedding)) < 1e-6
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=SMOL, input="x")  # not an embedding model
