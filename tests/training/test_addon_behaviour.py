"""The whole path with the real small model: a dataset teaching SmolLM2 to open every answer
with a fixed phrase, a fine-tuning job through the fireworks-ai SDK, the output addon loaded
into a deployment of the base model (multi-LoRA), and held-out prompts through the OpenAI
SDK: the addon shows the behaviour on at least 8 of 10, the base model on at most 1."""
from __future__ import annotations

import json

import pytest

from tests.conftest import sdk, stop_server
from tests.serving.serving_helpers import SMOL, openai_client, start_serving, wait_deployed, wait_deployment_ready
from tests.training.helpers import dataset, job_id_of, wait_for

pytestmark = pytest.mark.slow
PHRASE = "Ahoy there, friend!"
TOPICS = ["the moon", "coffee", "rain", "bicycles", "music", "the ocean", "trees", "winter", "books", "cats",
          "trains", "bread", "mountains", "clocks", "rivers", "bees", "chess", "gardens", "candles", "maps"]
ASKS = ["Tell me something about {}.", "What do you think of {}?"]
HELD_OUT = ["What is the capital of Italy?", "Give me a tip for sleeping better.", "Why is the sky blue?",
            "Name a famous painter.", "How do I boil an egg?", "What is two plus three?",
            "Suggest a name for a dog.", "What language is spoken in Brazil?", "Describe a sunset briefly.",
            "What is a good breakfast?"]


def training_lines() -> list[dict]:
    return [{"messages": [{"role": "user", "content": ask.format(topic)},
                          {"role": "assistant", "content": f"{PHRASE} {topic.capitalize()} are worth a thought."}]}
            for topic in TOPICS for ask in ASKS]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_serving(tmp_path_factory, "sqlite")
    yield srv
    stop_server(srv)


def _opens_with_phrase(client, model: str) -> list[str]:
    answers = []
    for prompt in HELD_OUT:
        out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                             max_tokens=8, temperature=0)
        answers.append(out.choices[0].message.content or "")
    return answers


def test_addon_learns_an_opening_phrase_and_serves_it(server):
    client = sdk(server)
    ds = dataset(server, training_lines())
    job = client.supervised_fine_tuning_jobs.create(
        dataset=ds, base_model=SMOL, epochs=2, learning_rate=2e-3, lora_rank=8, batch_size=512,
        max_context_length=256, display_name="opening phrase", extra_body={"seed": 1})
    job = wait_for(client, job_id_of(job), {"JOB_STATE_COMPLETED"}, 1500, server=server)
    assert client.models.get(job.output_model.rsplit("/", 1)[1]).state == "READY"

    client.deployments.create(base_model=SMOL, deployment_id="ft-phrase", enable_addons=True)
    dep = f"accounts/{server.account_id}/deployments/ft-phrase"
    wait_deployment_ready(server, "ft-phrase")
    loaded = client.lora.load(model=job.output_model, deployment=dep)
    wait_deployed(server, loaded.name.split("/")[-1])

    oai = openai_client(server)
    tuned = _opens_with_phrase(oai, f"{job.output_model}#{dep}")
    base = _opens_with_phrase(oai, f"{SMOL}#{dep}")
    report = json.dumps({"tuned": tuned, "base": base}, indent=1)
    assert sum(a.startswith("Ahoy there") for a in tuned) >= 8, report
    assert sum(a.startswith("Ahoy there") for a in base) <= 1, report
