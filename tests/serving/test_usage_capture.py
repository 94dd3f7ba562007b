"""How the gateway reads a stream's usage for metering (gateway/usage_capture.py): it asks the
replica for the usage chunk, and the client sees exactly what it would have without that."""
from __future__ import annotations

import json

import pytest

from fireplace.gateway.usage_capture import UsageEvents, ask_for_usage

USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def event(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


STREAM = (event({"id": "c", "choices": [{"index": 0, "delta": {"content": "usage"}}]})   # text that says usage
          + event({"id": "c", "choices": [{"index": 0, "delta": {"content": " ok"}, "finish_reason": "stop"}]})
          + event({"id": "c", "choices": [], "usage": USAGE}) + b"data: [DONE]\n\n")
WITHOUT_USAGE = STREAM.replace(event({"id": "c", "choices": [], "usage": USAGE}), b"")


@pytest.mark.parametrize("body, asks, strips", [
    ({"stream": True}, True, True),
    ({"stream": True, "stream_options": {"include_usage": False}}, True, True),
    ({"stream": True, "stream_options": {}}, True, True),
    ({"stream": True, "stream_options": {"include_usage": True}}, False, False),
    ({"stream": True, "perf_metrics_in_response": True}, False, False),     # the replica sends it anyway
    ({"stream": True, "stream_options": "yes"}, False, False),              # invalid: the replica refuses it
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, False, False),
])
def test_ask_for_usage(body, asks, strips):
    raw = json.dumps(body).encode()
    sent, strip = ask_for_usage(raw, body)
    assert strip is strips
    if asks:
        assert json.loads(sent) == {**body, "stream_options": {**(body.get("stream_options") or {}),
                                                               "include_usage": True}}
    else:
        assert sent is raw


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
@pytest.mark.parametrize("strip", [True, False])
def test_events_are_reframed_and_the_usage_noted(size, strip):
    events = UsageEvents(strip)
    out = b"".join(events.feed(STREAM[i:i + size]) for i in range(0, len(STREAM), size)) + events.rest()
    assert out == (WITHOUT_USAGE if strip else STREAM)
    assert events.usage == USAGE


def test_a_stream_cut_short_reports_no_usage():
    events = UsageEvents(True)
    cut = STREAM[:STREAM.index(b'"usage"') - 5]
    out = events.feed(cut) + events.rest()
    assert out == cut and events.usage is None
