"""Metered inference usage, the table and API part, on SQLite and PostgreSQL: the gateway's Meter
(gateway/metering.py) writing into a real server's database, read back through
`GET /v1/accounts/{a}/usage` (account-scoped, day range). The request path (tokens from real
answers, streams) is tested against the bundled model in tests/cli/test_usage.py."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from fireplace.control.usage.tables import utc_today
from fireplace.db.engine import make_engine, make_session_factory
from fireplace.db.migrate import upgrade
from fireplace.gateway.metering import Meter
from tests.conftest import http, new_account
from tests.servers import Server

MODEL_A = "accounts/fireplace/models/smollm2-135m-instruct"
MODEL_B = "accounts/someone/models/my-lora"


def database_url(server: Server) -> str:
    return server.database_url or f"sqlite:///{server.home / 'fireplace.db'}"


@pytest.fixture
def meter(server):
    engine = make_engine(database_url(server))
    m = Meter(make_session_factory(engine), interval_s=3600)
    yield m
    m.close()
    engine.dispose()


def usage(server: Server, account_id: str, key: str, **params):
    with http(server, key) as c:
        return c.get(f"/v1/accounts/{account_id}/usage", params=params)


def rows(answer: dict) -> list[tuple]:
    return [(r["day"], r["model"], int(r["requests"]), int(r["promptTokens"]), int(r["completionTokens"]))
            for r in answer["modelUsage"]]


def test_flushes_add_up_per_model_and_day(server, meter):
    account_id, key = new_account(server)
    other_id, _ = new_account(server)
    d1, d2, d3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
    meter.record(account_id, MODEL_A, {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, day=d1)
    meter.record(account_id, MODEL_A, {"prompt_tokens": 7, "completion_tokens": 3}, day=d1)
    meter.record(account_id, MODEL_B, {"prompt_tokens": 4}, day=d1)      # embeddings: no completion tokens
    meter.record(other_id, MODEL_A, {"prompt_tokens": 99, "completion_tokens": 99}, day=d1)
    assert meter.flush() == 3
    assert meter.flush() == 0
    # a second flush adds to the rows already there (the upsert), and new days get new rows
    meter.record(account_id, MODEL_A, {"prompt_tokens": 1, "completion_tokens": 2}, day=d1)
    meter.record(account_id, MODEL_A, {"prompt_tokens": 20, "completion_tokens": 8}, day=d2)
    meter.record(account_id, MODEL_A, {"prompt_tokens": 5, "completion_tokens": 5}, day=d3)
    meter.close()   # shutdown writes what is pending

    r = usage(server, account_id, key, startDate="2026-03-01", endDate="2026-03-02")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["name"] == f"accounts/{account_id}/usage"
    assert (answer["startDate"], answer["endDate"]) == ("2026-03-01", "2026-03-02")
    assert rows(answer) == [("2026-03-01", MODEL_A, 3, 18, 10), ("2026-03-01", MODEL_B, 1, 4, 0),
                            ("2026-03-02", MODEL_A, 1, 20, 8)]
    assert all(isinstance(r["requests"], str) for r in answer["modelUsage"])   # int64 as strings
    assert "deployments" in answer["usage"]                                      # the quota counts stay
    assert rows(usage(server, account_id, key, startDate="2026-03-03", endDate="2026-03-03").json()) == [
        ("2026-03-03", MODEL_A, 1, 5, 5)]


def test_default_range_is_the_last_30_days(server, meter):
    account_id, key = new_account(server)
    today = utc_today()
    meter.record(account_id, MODEL_A, {"prompt_tokens": 3, "completion_tokens": 4})
    meter.record(account_id, MODEL_A, {"prompt_tokens": 1, "completion_tokens": 1}, day=today - timedelta(days=29))
    meter.record(account_id, MODEL_A, {"prompt_tokens": 1, "completion_tokens": 1}, day=today - timedelta(days=30))
    meter.flush()
    answer = usage(server, account_id, key).json()
    assert (answer["startDate"], answer["endDate"]) == ((today - timedelta(days=29)).isoformat(), today.isoformat())
    assert rows(answer) == [((today - timedelta(days=29)).isoformat(), MODEL_A, 1, 1, 1),
                            (today.isoformat(), MODEL_A, 1, 3, 4)]


def test_usage_is_account_scoped(server, meter):
    account_id, key = new_account(server)
    other_id, other_key = new_account(server)
    meter.record(account_id, MODEL_A, {"prompt_tokens": 3, "completion_tokens": 4})
    meter.flush()
    r = usage(server, account_id, other_key)
    assert r.status_code == 404 and r.json()["code"] == 5, r.text
    assert usage(server, other_id, other_key).json()["modelUsage"] == []
    assert rows(usage(server, account_id, server.api_key).json())[0][2:] == (1, 3, 4)   # platform admin


@pytest.mark.parametrize("params, field", [
    ({"startDate": "2026-02-30"}, "startDate"), ({"endDate": "yesterday"}, "endDate"),
    ({"startDate": "2026-03-02", "endDate": "2026-03-01"}, "startDate"),
    ({"startDate": "2024-01-01", "endDate": "2026-01-01"}, "startDate")])
def test_bad_day_ranges_are_400(server, params, field):
    account_id, key = new_account(server)
    r = usage(server, account_id, key, **params)
    assert r.status_code == 400 and r.json()["code"] == 3, r.text
    assert field in r.json()["message"]


def test_a_failed_flush_keeps_its_counts(tmp_path):
    """A database that refuses the write (here: not migrated yet) loses nothing; the next flush
    writes the sums of both attempts."""
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    meter = Meter(make_session_factory(engine), interval_s=3600)
    meter.record("acme", MODEL_A, {"prompt_tokens": 2, "completion_tokens": 3}, day=date(2026, 1, 1))
    with pytest.raises(Exception):
        meter.flush()
    meter.record("acme", MODEL_A, {"prompt_tokens": 1, "completion_tokens": 1}, day=date(2026, 1, 1))
    upgrade(engine)
    assert meter.flush() == 1
    with engine.connect() as conn:
        from sqlalchemy import text
        got = conn.execute(text("SELECT requests, prompt_tokens, completion_tokens FROM inference_usage")).all()
    assert [tuple(r) for r in got] == [(2, 3, 4)]
    meter.close()
    engine.dispose()
