"""A model's conversationConfig.template reaches its replicas and is what the model sees.

One real `fireplace serve` (no catalog: only the tiny random Llama of tests/training/tiny_model.py,
whose tokenizer carries a ChatML template), two uploads of the same files:
  plain      no override: the tokenizer's own ChatML
  custom     a distinctive template (tags, upper-cased roles, the tokenizer's bos_token) that
             raises for system messages and refers to an undefined field for messages with a name
each with a deployment. A template with a Jinja syntax error is refused by the control plane. The prompt a replica built comes back as `prompt_token_ids`
(return_token_ids) and is compared with the template rendered here by jinja2 and tokenized.
A PATCH of the template reaches replicas started after it (the controller reads the model when it
starts a replica), so no live change is tested.
"""
from __future__ import annotations

import openai
import pytest

from tests.conftest import http, sdk, stop_server
from tests.control.helpers_resources import upload_model
from tests.serving.serving_helpers import openai_client, start_serving, wait_deployment_ready
from tests.training.tiny_model import CHATML, tiny_model_dir, tiny_model_files

pytestmark = pytest.mark.slow

CUSTOM = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}{{- raise_exception('this model takes no system messages') -}}{%- endif -%}"
    "{%- if m.name is defined -%}{{- m.profile.nickname -}}{%- endif -%}"
    "[[{{- m.role | upper -}}]] {{ m.content }} [[/{{- m.role | upper -}}]]"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}[[ASSISTANT]]{%- endif -%}")
BROKEN = "{% for m in messages %}{{ m.content }}"  # no endfor
MESSAGES = [{"role": "user", "content": "hello world, how are you today?"},
            {"role": "assistant", "content": "the sea is calm"},
            {"role": "user", "content": "count: one two three"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_serving(tmp_path_factory, "sqlite", FIREPLACE_IMPORT_CATALOG="false")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_model_dir(tmp_path_factory.mktemp("tiny-tok"))))


@pytest.fixture(scope="module")
def models(server):
    """{"plain" | "custom": "<model full name>#<deployment full name>"}, all READY."""
    client = sdk(server)
    targets = {}
    for key, template in (("plain", None), ("custom", CUSTOM)):
        spec = {"kind": "HF_BASE_MODEL"}
        if template is not None:
            spec["conversationConfig"] = {"template": template}
        name = upload_model(server, f"tiny-{key}", tiny_model_files(), spec)
        client.deployments.create(base_model=name, deployment_id=f"tiny-{key}")
        targets[key] = f"{name}#accounts/{server.account_id}/deployments/tiny-{key}"
    for key in targets:
        wait_deployment_ready(server, f"tiny-{key}")
    return targets


def _prompt_ids(server, model: str, messages) -> list[int]:
    out = openai_client(server).chat.completions.create(model=model, messages=messages, max_tokens=1,
                                                        temperature=0, extra_body={"return_token_ids": True})
    ids = out.model_dump()["prompt_token_ids"]
    assert out.usage.prompt_tokens == len(ids)
    return ids


def _render_here(template: str, tokenizer, messages) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)


def test_model_template_builds_the_prompt(server, models, tokenizer):
    text = _render_here(CUSTOM, tokenizer, MESSAGES)
    assert text.startswith("<|im_start|>[[USER]] hello world") and text.endswith("[[ASSISTANT]]")
    expected = tokenizer.encode(text, add_special_tokens=False)
    assert _prompt_ids(server, models["custom"], MESSAGES) == expected
    # the same messages without the override: the tokenizer's own ChatML, a different prompt
    own = tokenizer.encode(_render_here(CHATML, tokenizer, MESSAGES), add_special_tokens=False)
    assert tokenizer.chat_template == CHATML
    plain = _prompt_ids(server, models["plain"], MESSAGES)
    assert plain == own and plain != expected
    assert tokenizer.decode(plain).startswith("<|im_start|>user\nhello world")
    # the model stores the template as given
    got = sdk(server).models.get("tiny-custom")
    assert got.conversation_config.template == CUSTOM


def _bad_request(server, model: str, messages) -> dict:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(server).chat.completions.create(model=model, messages=messages, max_tokens=1)
    body = info.value.body
    assert info.value.status_code == 400 and body["type"] == "invalid_request_error", body
    assert body["param"] == "messages", body
    return body


def test_template_that_fails_to_render_is_a_400(server, models):
    body = _bad_request(server, models["custom"], [{"role": "system", "content": "be brief"}, *MESSAGES])
    assert "this model takes no system messages" in body["message"]
    body = _bad_request(server, models["custom"], [{"role": "user", "content": "hi", "name": "bob"}])
    assert "has no attribute 'profile'" in body["message"], body
    # the replica is unharmed: the next request renders
    assert _prompt_ids(server, models["custom"], MESSAGES)
    # completions never use the chat template
    out = openai_client(server).completions.create(model=models["custom"], prompt="hello", max_tokens=1)
    assert out.usage.prompt_tokens > 0


def test_template_with_a_syntax_error_is_refused_on_the_model(server, models):
    """Parsed when set (create or PATCH): a 400 naming the line, instead of every chat request
    of every deployment failing later; the model keeps its template."""
    models_url = f"/v1/accounts/{server.account_id}/models"
    with http(server) as c:
        created = c.post(models_url, json={"modelId": "tiny-broken",
                                           "model": {"kind": "HF_BASE_MODEL",
                                                     "conversationConfig": {"template": BROKEN}}})
        assert created.status_code == 400, created.text
        assert "conversationConfig.template: line 1" in created.json()["message"]
        assert "endfor" in created.json()["message"], created.text
        assert c.get(f"{models_url}/tiny-broken").status_code == 404
        patched = c.patch(f"{models_url}/tiny-custom", json={"conversationConfig": {"template": BROKEN}})
        assert patched.status_code == 400 and "endfor" in patched.json()["message"], patched.text
    assert sdk(server).models.get("tiny-custom").conversation_config.template == CUSTOM
