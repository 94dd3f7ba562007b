"""Structured output and embeddings through the gateway, on the bundled models' serverless
deployments (real replica processes)."""
from __future__ import annotations

import base64
import json
import math
import struct

import jsonschema
import openai
import pytest

from tests.conftest import stop_server
from tests.serving.serving_helpers import SMOL, openai_client, start_serving

pytestmark = pytest.mark.slow
MINILM = "accounts/fireplace/models/all-minilm-l6-v2"
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    srv = start_serving(tmp_path_factory, "sqlite")
    yield openai_client(srv)
    stop_server(srv)


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
