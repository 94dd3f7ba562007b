"""fireplace.client: the retry policy and the error mapping, against a scripted HTTP server
(it answers what each test lists, so 429/503 with Retry-After can be produced on demand), and
the typed calls against a real `fireplace serve`."""
from __future__ import annotations

import email.utils
import time

import pytest

from fireplace import errors
from fireplace.client import ConnectionFailed, Fireplace
from fireplace.client.inference import iter_sse
from fireplace.client.transport import retry_after_seconds


def client(url: str, slept: list | None = None, **kw) -> Fireplace:
    return Fireplace(url, "fw_key", "acct", sleep=(slept.append if slept is not None else None), **kw)


def test_429_and_503_are_retried_honouring_retry_after(scripted):
    srv = scripted((429, {"retry-after": "2"}, {"code": 8, "message": "slow down"}),
                   (503, {"retry-after": "1"}, {"code": 14, "message": "starting"}),
                   (200, {}, {"name": "accounts/acct/models/m"}))
    slept: list[float] = []
    assert client(srv.url, slept).models.get("m") == {"name": "accounts/acct/models/m"}
    assert slept == [2.0, 1.0]
    assert [r[1] for r in srv.requests] == ["/v1/accounts/acct/models/m"] * 3
    assert srv.requests[0][2]["authorization"] == "Bearer fw_key"


def test_retry_after_as_an_http_date_and_without_it_backoff_doubles(scripted):
    later = email.utils.format_datetime(
        __import__("datetime").datetime.fromtimestamp(time.time() + 30, __import__("datetime").timezone.utc),
        usegmt=True)
    assert 25 <= retry_after_seconds(later) <= 31
    srv = scripted((503, {}, {"code": 14, "message": "a"}), (503, {}, {"code": 14, "message": "b"}),
                   (503, {}, {"code": 14, "message": "c"}), (503, {}, {"code": 14, "message": "d"}))
    slept: list[float] = []
    with pytest.raises(errors.Unavailable) as info:
        client(srv.url, slept).models.get("m")
    assert slept == [0.5, 1.0, 2.0] and info.value.message == "d" and len(srv.requests) == 4


def test_a_real_wait_is_honoured(scripted):
    srv = scripted((429, {"retry-after": "1"}, {"code": 8, "message": "x"}), (200, {}, {"ok": True}))
    start = time.monotonic()
    assert Fireplace(srv.url, "k", "a").get("/v1/x") == {"ok": True}
    assert time.monotonic() - start >= 1.0


def test_other_errors_are_not_retried_and_map_to_the_one_hierarchy(scripted):
    cases = [(404, {"code": 5, "message": "model 'x' not found", "details": []}, errors.NotFound),
             (400, {"code": 9, "message": "busy", "details": []}, errors.FailedPrecondition),
             (403, {"code": 7, "message": "role", "details": []}, errors.PermissionDenied),
             (409, {"code": 6, "message": "exists", "details": []}, errors.AlreadyExists),
             (413, {"code": 3, "message": "big", "details": []}, errors.PayloadTooLarge),
             (500, {"code": 13, "message": "internal error", "details": []}, errors.Internal),
             (400, {"error": {"message": "temperature: too hot", "type": "invalid_request_error",
                              "param": "temperature"}}, errors.InvalidArgument),
             (502, b"<html>bad gateway</html>", errors.Internal)]
    srv = scripted(*[(status, {"x-request-id": f"r{i}"}, body) for i, (status, body, _) in enumerate(cases)])
    fp = client(srv.url, [])
    for i, (status, body, cls) in enumerate(cases):
        with pytest.raises(cls) as info:
            fp.get("/v1/thing")
        exc = info.value
        assert exc.http_status == status and exc.request_id == f"r{i}"
        if isinstance(body, dict) and "message" in body:
            assert exc.message == body["message"]
    assert len(srv.requests) == len(cases)


def test_openai_error_param_is_kept(scripted):
    srv = scripted((400, {}, {"error": {"message": "bad temperature", "param": "temperature"}}))
    with pytest.raises(errors.InvalidArgument) as info:
        client(srv.url, []).inference.chat("m", [])
    assert info.value.message == "bad temperature" and info.value.details == [{"param": "temperature"}]


def test_unreachable_server_is_connection_failed():
    with pytest.raises(ConnectionFailed) as info:
        Fireplace("http://127.0.0.1:9", "k", "a", max_retries=1, sleep=lambda _s: None).models.get("m")
    assert "cannot reach http://127.0.0.1:9" in info.value.message


def test_a_get_that_times_out_is_retried_a_post_is_not(scripted):
    srv = scripted((200, {}, {"late": True}, 1.5), (200, {}, {"ok": True}))
    assert Fireplace(srv.url, "k", "a", timeout=0.5, sleep=lambda _s: None).get("/v1/x") == {"ok": True}
    assert len(srv.requests) == 2
    srv2 = scripted((200, {}, {"late": True}, 1.5))
    with pytest.raises(ConnectionFailed, match="no answer in time"):
        Fireplace(srv2.url, "k", "a", timeout=0.5, sleep=lambda _s: None).post("/v1/x", {})
    time.sleep(1.2)
    assert len(srv2.requests) == 1


def test_a_streamed_upload_body_is_never_resent(scripted, tmp_path):
    srv = scripted((503, {"retry-after": "0"}, {"code": 14, "message": "busy"}))
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    from fireplace.client.transfers import put_file
    with pytest.raises(errors.Unavailable):
        put_file(client(srv.url, []), srv.url + "/signed?sig=1", path)
    method, target, headers, body = srv.requests[0]
    assert len(srv.requests) == 1 and method == "PUT" and body == b"x" * 1000
    assert "authorization" not in {k.lower() for k in headers}   # signed URLs get no API key


def test_account_defaults_to_the_only_one_the_key_sees(scripted):
    srv = scripted((200, {}, {"accounts": [{"name": "accounts/solo"}]}), (200, {}, {"name": "accounts/solo/models/m"}))
    fp = Fireplace(srv.url, "k", sleep=lambda _s: None)
    fp.models.get("m")
    assert fp.account_id == "solo" and srv.requests[1][1] == "/v1/accounts/solo/models/m"
    srv2 = scripted((200, {}, {"accounts": [{"name": "accounts/a"}, {"name": "accounts/b"}]}))
    with pytest.raises(errors.InvalidArgument, match="several accounts"):
        Fireplace(srv2.url, "k").account_id


def test_names_ids_and_refusals():
    fp = Fireplace("http://127.0.0.1:9", "k", "me")
    assert fp.name("models", "m") == "accounts/me/models/m"
    assert fp.name("models", "accounts/fireplace/models/x") == "accounts/fireplace/models/x"
    for bad in ("accounts/fireplace/datasets/x", "a/b", "", "accounts/x/models/"):
        with pytest.raises(errors.InvalidArgument):
            fp.name("models", bad)


def test_sse_parsing():
    lines = [": keep-alive", "", 'data: {"choices": [{"delta": {"content": "He"}}]}', "",
             'data: {"choices": [{"delta": {"content": "llo"}}]}', "", "data: [DONE]", "", "data: {}", ""]
    assert [c["choices"][0]["delta"]["content"] for c in iter_sse(iter(lines))] == ["He", "llo"]
    with pytest.raises(errors.Internal, match="boom"):
        list(iter_sse(iter(['data: {"error": {"message": "boom"}}', ""])))


def test_typed_calls_against_a_real_server(cli_server):
    with Fireplace(cli_server.base_url, cli_server.api_key) as fp:   # the platform admin sees 2+ accounts
        with pytest.raises(errors.InvalidArgument, match="several accounts"):
            fp.models.list()
    with Fireplace(cli_server.base_url, cli_server.api_key, cli_server.account_id) as fp:
        assert fp.accounts.get()["name"] == f"accounts/{cli_server.account_id}"
        with pytest.raises(errors.NotFound) as info:
            fp.models.get("missing-model")
        assert info.value.http_status == 404 and info.value.request_id
        quotas = fp.quotas.list()["quotas"]
        assert {q["quotaId"] for q in quotas} >= {"deployments", "dataset-bytes"}
        assert list(fp.datasets.iter(page_size=1)) == []
    with Fireplace(cli_server.base_url, "fw_not_a_key", cli_server.account_id) as fp:
        with pytest.raises(errors.Unauthenticated):
            fp.models.list()
