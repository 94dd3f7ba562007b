"""`fireplace usage` against a real server serving the bundled SmolLM2: chat and completion
requests, streaming and not, through the gateway; `usage` then shows exactly the tokens those
answers reported, for the model, in a fresh account (so other tests' requests do not count).
A stream whose client did not ask for usage still counts, and the client still gets no usage
chunk; a refused request counts nothing."""
from __future__ import annotations

import json

import httpx
import pytest

from fireplace.control.usage.tables import utc_today
from tests.cli.helpers import Cli
from tests.cli.serving import BUNDLED
from tests.conftest import new_account

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Name a colour."}]
GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def account(serving_server):
    return new_account(serving_server)


@pytest.fixture(scope="module")
def usage_cli(serving_server, account, tmp_path_factory) -> Cli:
    return Cli(serving_server, tmp_path_factory.mktemp("usage-login") / "credentials",
               env={"FIREPLACE_API_KEY": account[1]})


def post(cli: Cli, path: str, body: dict) -> httpx.Response:
    return httpx.post(cli.server.base_url + path, json=body, timeout=300,
                      headers={"Authorization": f"Bearer {cli.env['FIREPLACE_API_KEY']}"})


def stream(cli: Cli, path: str, body: dict) -> list[dict]:
    events = []
    with httpx.stream("POST", cli.server.base_url + path, json={**body, "stream": True}, timeout=300,
                      headers={"Authorization": f"Bearer {cli.env['FIREPLACE_API_KEY']}"}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    return events


def test_usage_shows_the_tokens_the_answers_reported(usage_cli, account):
    chat = {"model": BUNDLED, "messages": MESSAGES, **GREEDY}
    completion = {"model": BUNDLED, "prompt": "Roses are red,", **GREEDY}
    reported = []

    answer = post(usage_cli, "/v1/chat/completions", chat)
    assert answer.status_code == 200, answer.text
    reported.append(answer.json()["usage"])
    # not asked for usage: the client gets no usage chunk, and the request counts as much as
    # the same greedy request did without streaming
    events = stream(usage_cli, "/v1/chat/completions", chat)
    assert events and all("usage" not in e for e in events)
    reported.append(answer.json()["usage"])
    events = stream(usage_cli, "/v1/chat/completions", {**chat, "stream_options": {"include_usage": True}})
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    reported.append(events[-1]["usage"])
    answer = post(usage_cli, "/v1/completions", completion)
    assert answer.status_code == 200, answer.text
    reported.append(answer.json()["usage"])
    events = stream(usage_cli, "/v1/completions", {**completion, "stream_options": {"include_usage": True}})
    reported.append(events[-1]["usage"])
    refused = post(usage_cli, "/v1/chat/completions", {**chat, "max_tokens": 0})
    assert refused.status_code == 400, refused.text

    today = utc_today().isoformat()
    answer = usage_cli.json("usage", "--start-date", today, "--end-date", today)
    account_id, key = account
    assert answer == usage_cli.api(f"/v1/accounts/{account_id}/usage?startDate={today}&endDate={today}", api_key=key)
    rows = [r for r in answer["modelUsage"] if r["model"] == BUNDLED]
    assert [r["day"] for r in rows] == [today]
    assert int(rows[0]["requests"]) == len(reported) == 5
    assert int(rows[0]["promptTokens"]) == sum(u["prompt_tokens"] for u in reported)
    assert int(rows[0]["completionTokens"]) == sum(u["completion_tokens"] for u in reported)

    table = usage_cli.run("usage").stdout
    assert BUNDLED in table and rows[0]["promptTokens"] in table and rows[0]["completionTokens"] in table
    assert "dataset-bytes" in table   # the quota counts are still shown


def test_bad_dates_are_a_usage_error_from_the_server(usage_cli):
    result = usage_cli.run("usage", "--start-date", "2026-13-01", expect=3)
    assert "startDate" in result.stderr
