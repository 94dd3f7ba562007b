"""`chat` and `complete` against the bundled SmolLM2 on a real server: greedy answers streamed
by the CLI equal what the API answers to the same request; -m, piped stdin, -o json and the
REPL. The REPL's conversation handling (history, /reset, /system) is checked on a scripted
server that records what the CLI sends."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.cli.helpers import Cli
from tests.cli.serving import BUNDLED
from tests.servers import Server

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def chat_cli(serving_server, tmp_path_factory) -> Cli:
    return Cli(serving_server, tmp_path_factory.mktemp("chat-login") / "credentials")


def api_chat(server: Server, messages: list[dict], **params) -> str:
    r = httpx.post(server.base_url + "/v1/chat/completions", timeout=300,
                   headers={"Authorization": f"Bearer {server.api_key}"},
                   json={"model": BUNDLED, "messages": messages, **params})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


GREEDY = ("--temperature", "0", "--max-tokens", "12")
GREEDY_PARAMS = {"temperature": 0, "max_tokens": 12}


def test_chat_m_streams_the_models_answer(chat_cli):
    result = chat_cli.run("chat", "smollm2-135m-instruct", "-m", QUESTION, *GREEDY)
    expected = api_chat(chat_cli.server, [{"role": "user", "content": QUESTION}], **GREEDY_PARAMS)
    assert expected.strip() and result.stdout == expected + "\n"


def test_chat_json_piped_stdin_and_system(chat_cli):
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": QUESTION}]
    expected = api_chat(chat_cli.server, messages, **GREEDY_PARAMS)
    answer = chat_cli.json("chat", BUNDLED, "-m", QUESTION, "--system", "Answer in one word.", *GREEDY)
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"] == expected
    piped = chat_cli.run("chat", BUNDLED, "--system", "Answer in one word.", *GREEDY, input=QUESTION)
    assert piped.stdout == expected + "\n"


def test_repl_against_the_model(chat_cli):
    result = chat_cli.run("chat", BUNDLED, "-i", *GREEDY, input=f"{QUESTION}\n/exit\n")
    expected = api_chat(chat_cli.server, [{"role": "user", "content": QUESTION}], **GREEDY_PARAMS)
    assert expected in result.stdout and "chatting with" in result.stderr


def test_complete_streams_the_raw_completion(chat_cli):
    prompt = "The capital of France is"
    r = httpx.post(chat_cli.server.base_url + "/v1/completions", timeout=300,
                   headers={"Authorization": f"Bearer {chat_cli.server.api_key}"},
                   json={"model": BUNDLED, "prompt": prompt, **GREEDY_PARAMS})
    assert r.status_code == 200, r.text
    expected = r.json()["choices"][0]["text"]
    assert chat_cli.run("complete", "smollm2-135m-instruct", prompt, *GREEDY).stdout == expected + "\n"
    assert chat_cli.json("complete", BUNDLED, prompt, *GREEDY)["choices"][0]["text"] == expected


def test_chat_errors_have_exit_codes(chat_cli):
    missing = chat_cli.run("chat", "accounts/fireplace/models/no-such-model", "-m", "hi", expect=4)
    assert "not found" in missing.stderr
    chat_cli.run("chat", BUNDLED, "-m", "hi", "--temperature", "-1", expect=2)   # refused before sending


def _sse(*texts: str) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in texts]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_repl_keeps_history_and_obeys_reset_and_system(scripted, tmp_path):
    sse = {"content-type": "text/event-stream"}
    srv = scripted((200, sse, _sse("Hel", "lo")), (200, sse, _sse("Fine")), (200, sse, _sse("Yes")))
    env = {"FIREPLACE_BASE_URL": srv.url, "FIREPLACE_API_KEY": "fw_k", "FIREPLACE_ACCOUNT": "acct"}
    cli = Cli(Server(home=tmp_path, backend="none", api_key=""), tmp_path / "login", env=env)
    script = "Hi there\nHow are you?\n/system Be brief.\n/reset\nAgain\n/exit\n"
    result = cli.run("chat", "accounts/a/models/m", "-i", "--max-tokens", "5", input=script)
    assert result.stdout == "Hello\nFine\nYes\n"
    bodies = [json.loads(r[3]) for r in srv.requests]
    assert [b["messages"] for b in bodies] == [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"},
         {"role": "user", "content": "How are you?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Again"}]]
    assert all(b["stream"] is True and b["max_tokens"] == 5 and b["model"] == "accounts/a/models/m" for b in bodies)
    assert "(conversation reset)" in result.stderr and "system prompt set" in result.stderr
