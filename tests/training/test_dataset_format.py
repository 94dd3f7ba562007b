"""The JSONL dataset validator, without a server: every rule, its line numbers and field paths."""
from __future__ import annotations

import hashlib
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from fireplace.training.dataset_format import LineError, validate_jsonl

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
COMPLETION = {"prompt": "2+2=", "completion": "4"}


def jsonl(*objs) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs)


def check(data: bytes, **kw):
    return validate_jsonl(io.BytesIO(data), **kw)


def errs(report) -> list[tuple[int, str]]:
    return [(e.line, e.field) for e in report.errors]


def chat(*messages, **extra) -> dict:
    return {"messages": list(messages), **extra}


def test_valid_chat_counts_examples_tokens_and_turns():
    data = jsonl(CHAT, CHAT, CHAT)
    r = check(data)
    assert r.ok and r.errors == [] and r.error_count == 0
    assert (r.format, r.example_count) == ("CHAT", 3)
    assert r.estimated_token_count == 6          # 3 * len("hi" + "hello") = 21 chars -> ceil(21 / 4)
    assert r.average_turn_count == 2.0
    assert r.size_bytes == len(data) and r.sha256 == hashlib.sha256(data).hexdigest()


def test_valid_completion():
    r = check(jsonl(COMPLETION, COMPLETION, {"prompt": "a", "completion": "b"}))
    assert r.ok and r.format == "COMPLETION" and r.example_count == 3
    assert r.estimated_token_count == 3          # (5 + 5 + 2) / 4
    assert r.average_turn_count is None


def test_blank_lines_crlf_bom_and_missing_final_newline():
    body = "\ufeff" + json.dumps(CHAT) + "\r\n\r\n   \n" + json.dumps(CHAT) + "\n\n" + json.dumps(CHAT)
    r = check(body.encode())
    assert r.ok, r.errors
    assert r.example_count == 3


def test_invalid_json_names_line_and_column():
    r = check(jsonl(CHAT, b'{"messages": [}', CHAT, CHAT))
    assert errs(r) == [(2, "")]
    assert r.errors[0].message.startswith("invalid JSON at column 15")


def test_non_object_line():
    r = check(jsonl(CHAT, [1, 2], "text", CHAT, CHAT))
    assert errs(r) == [(2, ""), (3, "")]
    assert "got array" in r.errors[0].message and "got string" in r.errors[1].message


def test_invalid_utf8_names_the_line():
    r = check(jsonl(CHAT, CHAT, b'{"prompt": "\xff\xfe"}', CHAT))
    assert errs(r) == [(3, "")]
    assert "invalid UTF-8 at byte 13" in r.errors[0].message


def test_overlong_line_is_refused_and_counting_continues():
    long_line = json.dumps(chat({"role": "user", "content": "x" * 500}, {"role": "assistant", "content": "y"}))
    r = check(jsonl(CHAT, long_line.encode(), CHAT, b"{bad", CHAT), max_line_bytes=200)
    assert errs(r) == [(2, ""), (4, "")]
    assert "longer than 200 bytes" in r.errors[0].message
    assert r.example_count == 5


def test_small_reads_give_the_same_report():
    class Trickle(io.RawIOBase):
        def __init__(self, data): self.buf = io.BytesIO(data)
        def read(self, n=-1): return self.buf.read(min(n, 7) if n and n > 0 else 7)
    data = jsonl(CHAT, b"{oops", COMPLETION, CHAT, "x" * 50)
    whole = check(data, max_line_bytes=40)
    trickled = validate_jsonl(Trickle(data), max_line_bytes=40)
    assert errs(whole) == errs(trickled) and whole.sha256 == trickled.sha256
    assert whole.example_count == trickled.example_count == 5


def test_chat_message_field_errors_have_paths():
    bad = chat({"role": "bot", "content": "x"},
               {"role": "user"},
               {"role": "user", "content": 5},
               {"role": "user", "content": [{"type": "text", "text": "ok"}, {"type": "image_url"}, {"type": "text"}]},
               {"role": "assistant", "content": "y", "weight": 2},
               {"role": "assistant", "content": "y", "weight": True},
               {"role": "user", "content": "z", "tool_calls": [{"function": {"name": "f"}}]},
               {"role": "assistant", "content": "ok", "name": 3},
               "not a message")
    r = check(jsonl(CHAT, bad, CHAT, CHAT))
    assert errs(r) == [(2, "messages[0].role"), (2, "messages[1].content"), (2, "messages[2].content"),
                       (2, "messages[3].content[1]"), (2, "messages[3].content[2].text"),
                       (2, "messages[4].weight"), (2, "messages[5].weight"), (2, "messages[6].tool_calls"),
                       (2, "messages[7].name"), (2, "messages[8]")]
    assert "must be one of system, user, assistant, tool; got 'bot'" in r.errors[0].message


def test_chat_needs_an_assistant_message_to_train_on():
    only_user = chat({"role": "user", "content": "a"})
    weight_zero = chat({"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0})
    r = check(jsonl(only_user, weight_zero, CHAT))
    assert errs(r) == [(1, "messages"), (2, "messages")]
    assert "nothing to train on" in r.errors[0].message


def test_messages_must_be_a_non_empty_list():
    r = check(jsonl({"messages": []}, {"messages": "hi"}, CHAT, CHAT))
    assert errs(r) == [(1, "messages"), (2, "messages")]


def test_tool_calls_and_tools():
    good = chat({"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                      "function": {"name": "get", "arguments": "{}"}}]},
                {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                {"role": "assistant", "content": "It is sunny.", "weight": 1},
                tools=[{"type": "function", "function": {"name": "get", "description": "d",
                                                         "parameters": {"type": "object"}}}])
    bad_tools = dict(CHAT, tools=[{"type": "retrieval"}, {"type": "function", "function": {"description": 1}},
                                  "x"])
    bad_call = chat({"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": {}}}]})
    r = check(jsonl(good, bad_tools, bad_call))
    assert errs(r) == [(2, "tools[0].type"), (2, "tools[0].function"), (2, "tools[1].function.name"),
                       (2, "tools[1].function.description"), (2, "tools[2]"),
                       (3, "messages[1].tool_calls[0].function.name"),
                       (3, "messages[1].tool_calls[0].function.arguments")]


def test_completion_field_errors():
    r = check(jsonl({"prompt": "p"}, {"prompt": "", "completion": "c"}, {"prompt": 1, "completion": "c"},
                    COMPLETION))
    assert errs(r) == [(1, "completion"), (2, "prompt"), (3, "prompt")]
    assert r.errors[0].message == "is required"
    assert "an empty string" in r.errors[1].message


def test_mixed_formats_error_at_the_first_line_that_differs():
    r = check(jsonl(COMPLETION, COMPLETION, CHAT, COMPLETION, CHAT))
    assert errs(r) == [(3, "messages"), (5, "messages")]
    assert "CHAT example in a COMPLETION dataset" in r.errors[0].message
    assert "set by line 1" in r.errors[0].message


def test_declared_format_that_disagrees():
    r = check(jsonl(CHAT, CHAT, CHAT), declared_format="COMPLETION")
    assert errs(r) == [(1, "messages"), (2, "messages"), (3, "messages")]
    assert "was declared" in r.errors[0].message
    assert check(jsonl(CHAT, CHAT, CHAT), declared_format="CHAT").ok
    assert check(jsonl(CHAT, CHAT, CHAT), declared_format="FORMAT_UNSPECIFIED").format == "CHAT"


def test_line_with_both_or_neither_format():
    r = check(jsonl(dict(CHAT, prompt="x"), {"text": "hello"}, CHAT, CHAT))
    assert errs(r) == [(1, ""), (2, "")]
    assert "both" in r.errors[0].message and "neither" in r.errors[1].message


def test_too_few_examples_and_empty_file():
    r = check(jsonl(CHAT, CHAT))
    assert errs(r) == [(0, "")]
    assert "2 example(s); at least 3" in r.errors[0].message
    assert r.errors[0].describe().startswith("file: ")
    empty = check(b"\n\n")
    assert empty.example_count == 0 and errs(empty) == [(0, "")]
    assert check(jsonl(CHAT), min_examples=1).ok


def test_errors_are_capped_but_counted():
    r = check(jsonl(*([b"{bad"] * 150)), max_errors=100)
    assert len(r.errors) == 100 and r.error_count == 150
    assert [e.line for e in r.errors] == list(range(1, 101))
    assert "150 errors" in r.summary() and "and 145 more" in r.summary()


def test_unknown_keys_warn_but_pass():
    extra = dict(CHAT, metadata={"source": "x"})
    extra["messages"] = [dict(CHAT["messages"][0], reasoning="r"), CHAT["messages"][1]]
    r = check(jsonl(extra, extra, CHAT))
    assert r.ok
    assert r.warnings[0] == "unknown field 'metadata' ignored (first on line 1)"
    assert "reasoning" in r.warnings[1]


def test_rl_format_needs_no_assistant_and_keeps_extra_keys():
    rl = {"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": "4"}
    r = check(jsonl(rl, rl, rl), declared_format="RL")
    assert r.ok and r.format == "RL" and r.warnings == []
    assert not check(jsonl(rl, rl, rl)).ok   # as CHAT, there is nothing to train on


def test_line_error_shapes():
    e = LineError(3, "messages[2].role", "bad")
    assert e.describe() == "line 3, messages[2].role: bad"
    assert e.as_dict() == {"line": 3, "field": "messages[2].role", "message": "bad"}
    assert LineError(4, "", "x").describe() == "line 4: x"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(data):
    r = check(data, max_line_bytes=64)
    assert r.error_count >= len(r.errors)
    assert r.size_bytes == len(data)
    assert all(0 <= e.line <= data.count(b"\n") + 1 for e in r.errors)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
                               ["messages", "role", "content", "weight", "prompt", "completion", "tools",
                                "type", "function", "name", "tool_calls", "text"]), c, max_size=4),
                           max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values, max_size=6))
def test_arbitrary_json_lines_never_crash(values):
    r = check(jsonl(*[json.dumps(v).encode() for v in values]))
    assert r.ok == (r.error_count == 0)
    assert all(1 <= e.line <= len(values) for e in r.errors if e.line)
