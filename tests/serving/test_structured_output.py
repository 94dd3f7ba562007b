"""Structured output (response_format) on the real bundled SmolLM2-135M-Instruct.

With the grammar, every greedy answer to every prompt ends by itself (finish_reason "stop"),
parses, and validates against its schema (jsonschema); without it, the same prompts mostly do
not. Schemas bound their strings, arrays and integers, so a complete value always fits
MAX_TOKENS and "cut by max_tokens" cannot pass for valid. Also: the grammar allows EOS only at
a complete value, bad response_format values are 400-class errors naming the parameter, and
n > 1 samples each follow the schema.
"""
from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from fireplace.catalog.smollm2 import ensure_smollm2
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.errors import InvalidRequestError
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.sampling_params import SamplingParams
from fireplace.serving.structured_output import MAX_SCHEMA_BYTES, check_response_format, make_structured_processor

MAX_TOKENS = 160

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1, "maxItems": 3}},
    "required": ["name", "age", "hobbies"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 24},
    "sky": {"enum": ["sunny", "cloudy", "rain", "snow"]},
    "temperature_c": {"type": "integer", "minimum": -50, "maximum": 60}},
    "required": ["city", "sky", "temperature_c"], "additionalProperties": False}
VERDICT = {"type": "object", "properties": {
    "answer": {"type": "string", "enum": ["yes", "no"]},
    "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
    "reason": {"type": "string", "maxLength": 60}},
    "required": ["answer", "confidence", "reason"], "additionalProperties": False}
SHOPPING = {"type": "object", "properties": {
    "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                         "quantity": {"type": "integer", "minimum": 1, "maximum": 20}},
        "required": ["name", "quantity"], "additionalProperties": False}},
    "urgent": {"type": "boolean"}},
    "required": ["items", "urgent"], "additionalProperties": False}

CASES = [
    (PERSON, "Describe a fictional person: their name, age and hobbies."),
    (PERSON, "Who was Ada Lovelace? Give her name, age and hobbies."),
    (WEATHER, "What is the weather like in Lisbon today?"),
    (WEATHER, "Describe a snowy day in Oslo."),
    (VERDICT, "Is the Earth round? Answer with a reason."),
    (VERDICT, "Can cats fly?"),
    (SHOPPING, "I need to buy milk, eggs and bread for breakfast tomorrow."),
    (SHOPPING, "Make a shopping list for a birthday party."),
]


@pytest.fixture(scope="module")
def engine():
    return LLMEngine(EngineConfig(model=str(ensure_smollm2()), kv_cache_bytes=96 << 20, num_threads=2))


def chat(engine, content: str) -> str:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                add_generation_prompt=True)


def schema_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def processor_for(engine, response_format):
    return make_structured_processor(response_format, engine.tokenizer, vocab_size=engine.model_config.vocab_size,
                                     eos_token_ids=engine.eos_token_ids)


def is_valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_constrained_output_always_validates_and_free_output_often_does_not(engine):
    prompts = [chat(engine, f"{prompt} Reply in JSON.") for _, prompt in CASES]
    params = [SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                             logits_processor=processor_for(engine, schema_format(f"case{i}", schema)))
              for i, (schema, _) in enumerate(CASES)]
    free = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    constrained = engine.generate(prompts, params)  # one batch, a different grammar per request
    for (schema, prompt), out in zip(CASES, constrained):
        completion = out.outputs[0]
        assert completion.finish_reason == "stop", (prompt, completion.text)
        assert is_valid(completion.text, schema), (prompt, completion.text)
    num_free_valid = sum(is_valid(o.outputs[0].text, schema) for (schema, _), o in zip(CASES, free))
    assert num_free_valid <= len(CASES) // 2, [o.outputs[0].text for o in free]


def test_json_object_gives_an_object(engine):
    prompts = [chat(engine, p) for p in ("Give the capital of France as JSON.", "List two colours as JSON.",
                                         "Return a JSON object with your name.")]
    factory = processor_for(engine, {"type": "json_object"})
    for out in engine.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS,
                                                       repetition_penalty=1.2, logits_processor=factory)):
        completion = out.outputs[0]
        if completion.finish_reason == "stop":
            assert isinstance(json.loads(completion.text), dict), completion.text
        else:  # cut by max_tokens: still a valid prefix of an object
            assert completion.text.startswith("{")


def test_fireworks_json_object_with_schema(engine):
    factory = processor_for(engine, {"type": "json_object", "schema": WEATHER})
    (out,) = engine.generate([chat(engine, "Weather in Rome, as JSON.")],
                             SamplingParams(temperature=0, max_tokens=MAX_TOKENS, logits_processor=factory))
    assert out.outputs[0].finish_reason == "stop" and is_valid(out.outputs[0].text, WEATHER)


def test_sampled_siblings_each_follow_the_schema(engine):
    factory = processor_for(engine, schema_format("verdict", VERDICT))
    (out,) = engine.generate([chat(engine, "Is water wet? Reply in JSON.")],
                             SamplingParams(temperature=0.9, seed=11, n=3, max_tokens=MAX_TOKENS,
                                            logits_processor=factory))
    texts = [o.text for o in out.outputs]
    assert len(texts) == 3
    for o in out.outputs:
        assert o.finish_reason == "stop" and is_valid(o.text, VERDICT), o.text


def test_eos_is_allowed_only_at_a_complete_value(engine):
    factory = processor_for(engine, schema_format("person", PERSON))
    processor = factory()
    eos = engine.eos_token_ids[0]
    text = json.dumps({"name": "Ada", "age": 36, "hobbies": ["maths"]})
    tokens = engine.tokenizer.encode(text, add_special_tokens=False)
    bitmask = torch.full((1, (engine.model_config.vocab_size + 31) // 32), -1, dtype=torch.int32)

    def allows(history, token) -> bool:
        processor.fill_bitmask(history, bitmask, 0)
        return bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)

    for i, token in enumerate(tokens):
        assert allows(tokens[:i], token), (i, engine.tokenizer.decode(tokens[:i + 1]))
        assert not allows(tokens[:i], eos), i
    assert allows(tokens, eos)
    brace = engine.tokenizer.encode("}", add_special_tokens=False)[0]
    assert not allows(tokens, brace)


@pytest.mark.parametrize("response_format, fragment", [
    ("json", "must be an object"),
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "json_schema must be an object"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "name"),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": PERSON}}, "name"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": PERSON, "strict": "yes"}}, "strict"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": [1, 2]}}, "must be a JSON object"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "foo"}}}, "not a valid JSON Schema"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "properties": {"a": {"minimum": "x"}}}}}, "['properties']['a']['minimum']"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}, "cannot be compiled"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "integer", "minimum": 5, "maximum": 1}}}, "minimum greater than maximum"),
    ({"type": "json_object", "schema": {"type": "object", "description": "x" * MAX_SCHEMA_BYTES}}, "limit"),
])
def test_bad_response_format_is_an_invalid_request(engine, response_format, fragment):
    with pytest.raises(InvalidRequestError) as err:
        processor_for(engine, response_format)
    assert err.value.param == "response_format"
    assert fragment in err.value.message, err.value.message


def test_text_is_no_constraint_and_conflicting_params_are_refused(engine):
    assert processor_for(engine, {"type": "text"}) is None
    assert processor_for(engine, None) is None
    assert check_response_format({"type": "json_object"}) == ({"type": "object"}, "json_object")
    assert check_response_format(schema_format("w", WEATHER))[0] == WEATHER
    factory = processor_for(engine, {"type": "json_object"})
    SamplingParams(logits_processor=factory).validate()
    for bad, param in (({"ignore_eos": True}, "ignore_eos"), ({"min_tokens": 3}, "min_tokens")):
        with pytest.raises(InvalidRequestError) as err:
            SamplingParams(logits_processor=factory, **bad).validate()
        assert err.value.param == param
