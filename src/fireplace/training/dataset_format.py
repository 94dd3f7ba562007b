"""Line-by-line validation of a JSONL training dataset.

One example per line; blank lines are skipped. Two formats (one per file):

    CHAT        {"messages": [{"role": "system|user|assistant|tool", "content": "...",
                               "weight": 0|1, "name": "...", "tool_calls": [...]}, ...],
                 "tools": [{"type": "function", "function": {"name", "description", "parameters"}}]}
    COMPLETION  {"prompt": "...", "completion": "..."}

(`RL`, when declared, is CHAT without the need for an assistant message; other top-level keys
are its ground truth and pass unchecked.)

Rules, each broken rule an error naming its 1-based line and field path (`messages[2].role`):
  - the file is UTF-8; each non-blank line is one JSON object of at most `max_line_bytes`
    (default 1 MiB) bytes;
  - the first example fixes the format (or the declared one does); a later line of the other
    format is an error;
  - CHAT: `messages` a non-empty list; `content` a string or a list of {"type": "text", "text"}
    parts (an assistant message with `tool_calls` may omit it); `weight` 0 or 1; at least one
    assistant message with weight 1 (absent means 1), else there is nothing to train on;
  - COMPLETION: `prompt` and `completion` non-empty strings;
  - at least `min_examples` examples.
Unknown top-level keys are ignored, with one warning per key.

The first `max_errors` errors are listed; `error_count` keeps counting past them.
`estimated_token_count` is ceil(characters / 4) over the text a model would see (message
contents, tool calls and tool definitions as JSON, prompt and completion): a tokenizer-free
estimate, about right for English with BPE tokenizers.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

MAX_LINE_BYTES = 1 << 20
MAX_WARNINGS = 20
CHARS_PER_TOKEN = 4
READ_CHUNK = 1 << 20

CHAT, COMPLETION, RL = "CHAT", "COMPLETION", "RL"
FORMATS = (CHAT, COMPLETION, RL)
ROLES = ("system", "user", "assistant", "tool")
_KNOWN_KEYS = {CHAT: {"messages", "tools"}, COMPLETION: {"prompt", "completion"}}
_MESSAGE_KEYS = {"role", "content", "weight", "name", "tool_calls", "tool_call_id"}


@dataclass(frozen=True)
class LineError:
    line: int      # 1-based; 0 means the file as a whole
    field: str     # 'messages[2].role'; '' for the whole line
    message: str

    def describe(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}{', ' + self.field if self.field else ''}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


@dataclass
class DatasetReport:
    format: str | None = None             # CHAT | COMPLETION | RL; None when nothing told
    example_count: int = 0                # non-blank lines
    estimated_token_count: int = 0
    errors: list[LineError] = field(default_factory=list)   # the first max_errors
    error_count: int = 0                  # all of them
    warnings: list[str] = field(default_factory=list)
    size_bytes: int = 0
    sha256: str = ""
    message_count: int = 0                # CHAT/RL: messages over all examples

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    @property
    def average_turn_count(self) -> float | None:
        return self.message_count / self.example_count if self.message_count and self.example_count else None

    def summary(self, shown: int = 5) -> str:
        """'3 errors in the dataset: line 2, messages[0].role: ...; line 5: ...'"""
        head = "; ".join(e.describe() for e in self.errors[:shown])
        more = f"; and {self.error_count - shown} more" if self.error_count > shown else ""
        noun = "error" if self.error_count == 1 else "errors"
        return f"{self.error_count} {noun} in the dataset: {head}{more}"


class _Reader:
    """Splits a byte stream into lines (without the newline), hashing and counting as it goes.
    A line longer than the limit is yielded as None and never held in memory whole."""

    def __init__(self, stream: BinaryIO, max_line_bytes: int):
        self.stream, self.max_line_bytes = stream, max_line_bytes
        self.size, self.digest = 0, hashlib.sha256()

    def __iter__(self) -> Iterator[bytes | None]:
        buf, overlong = bytearray(), False
        while chunk := self.stream.read(READ_CHUNK):
            self.size += len(chunk)
            self.digest.update(chunk)
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                piece = chunk[start:] if end < 0 else chunk[start:end]
                if not overlong:
                    buf += piece
                    if len(buf) > self.max_line_bytes:
                        overlong = True
                        buf.clear()
                if end < 0:
                    break
                yield None if overlong else bytes(buf)
                buf.clear()
                overlong, start = False, end + 1
        if buf or overlong:
            yield None if overlong else bytes(buf)


class _Issues:
    """Errors of one line: (field, message) pairs, plus the characters of valid text seen."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.chars = 0
        self.messages = 0

    def add(self, field_path: str, message: str) -> None:
        self.items.append((field_path, message))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _line_format(obj: dict) -> str | None:
    is_chat = "messages" in obj
    is_completion = "prompt" in obj or "completion" in obj
    if is_chat and is_completion:
        return "BOTH"
    return CHAT if is_chat else COMPLETION if is_completion else None


def _check_content(path: str, content: Any, issues: _Issues) -> None:
    if isinstance(content, str):
        issues.chars += len(content)
        return
    if not isinstance(content, list):
        issues.add(path, f"must be a string or a list of text parts, got {_kind(content)}")
        return
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            issues.add(f"{path}[{j}]", 'must be a text part {"type": "text", "text": "..."}')
        elif not isinstance(part.get("text"), str):
            issues.add(f"{path}[{j}].text", f"must be a string, got {_kind(part.get('text'))}")
        else:
            issues.chars += len(part["text"])


def _check_tool_calls(path: str, calls: Any, issues: _Issues) -> None:
    if not isinstance(calls, list):
        issues.add(path, f"must be a list, got {_kind(calls)}")
        return
    for k, call in enumerate(calls):
        where = f"{path}[{k}]"
        if not isinstance(call, dict):
            issues.add(where, f"must be an object, got {_kind(call)}")
            continue
        if call.get("type", "function") != "function":
            issues.add(f"{where}.type", "must be 'function'")
        fn = call.get("function")
        if not isinstance(fn, dict):
            issues.add(f"{where}.function", "must be an object with 'name' and 'arguments'")
            continue
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            issues.add(f"{where}.function.name", "must be a non-empty string")
        if not isinstance(fn.get("arguments", ""), str):
            issues.add(f"{where}.function.arguments", "must be a string (JSON-encoded arguments)")
        issues.chars += len(json.dumps(fn, ensure_ascii=False, default=str))


def _check_message(path: str, msg: Any, issues: _Issues, unknown: set[str]) -> bool:
    """Check one message; True when it is an assistant message to train on (weight 1)."""
    if not isinstance(msg, dict):
        issues.add(path, f"must be an object with 'role' and 'content', got {_kind(msg)}")
        return False
    role = msg.get("role")
    if role not in ROLES:
        shown = repr(role)[:40] if role is not None else "nothing"
        issues.add(f"{path}.role", f"must be one of {', '.join(ROLES)}; got {shown}")
    calls = msg.get("tool_calls")
    if calls not in (None, []):
        if role != "assistant":
            issues.add(f"{path}.tool_calls", "only assistant messages may have tool_calls")
        else:
            _check_tool_calls(f"{path}.tool_calls", calls, issues)
    if msg.get("content") is None:
        if not (role == "assistant" and calls):
            issues.add(f"{path}.content", "is required")
    else:
        _check_content(f"{path}.content", msg["content"], issues)
    weight = msg.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        issues.add(f"{path}.weight", f"must be 0 or 1, got {str(weight)[:40]}")
    for key in ("name", "tool_call_id"):
        if msg.get(key) is not None and not isinstance(msg[key], str):
            issues.add(f"{path}.{key}", f"must be a string, got {_kind(msg[key])}")
    if len(msg) > 2:
        unknown.update(msg.keys() - _MESSAGE_KEYS)
    return role == "assistant" and weight != 0


def _check_tools(tools: Any, issues: _Issues) -> None:
    if not isinstance(tools, list):
        issues.add("tools", f"must be a list, got {_kind(tools)}")
        return
    for k, tool in enumerate(tools):
        where = f"tools[{k}]"
        if not isinstance(tool, dict):
            issues.add(where, f"must be an object, got {_kind(tool)}")
            continue
        if tool.get("type") != "function":
            issues.add(f"{where}.type", "must be 'function'")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            issues.add(f"{where}.function", "must be an object with 'name'")
            continue
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            issues.add(f"{where}.function.name", "must be a non-empty string")
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            issues.add(f"{where}.function.description", "must be a string")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            issues.add(f"{where}.function.parameters", "must be a JSON schema object")
    issues.chars += len(json.dumps(tools, ensure_ascii=False, default=str))


def check_chat(obj: dict, issues: _Issues, *, require_assistant: bool = True,
               unknown_message_keys: set[str] | None = None) -> None:
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        issues.add("messages", "must be a non-empty list of messages" if isinstance(messages, list)
                   else f"must be a list of messages, got {_kind(messages)}")
        return
    unknown = unknown_message_keys if unknown_message_keys is not None else set()
    trainable = [_check_message(f"messages[{i}]", m, issues, unknown) for i, m in enumerate(messages)]
    issues.messages += len(messages)
    if obj.get("tools") is not None:
        _check_tools(obj["tools"], issues)
    if require_assistant and not any(trainable):
        issues.add("messages", "no assistant message with weight 1: nothing to train on")


def check_completion(obj: dict, issues: _Issues) -> None:
    for key in ("prompt", "completion"):
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            issues.add(key, "is required" if value is None else
                       f"must be a non-empty string, got {'an empty string' if value == '' else _kind(value)}")
        else:
            issues.chars += len(value)


def _parse_line(raw: bytes | None, lineno: int, max_line_bytes: int) -> tuple[dict | None, str]:
    """One raw line -> (object, '') or (None, why). Blank lines give (None, '')."""
    if raw is None:
        return None, f"line is longer than {max_line_bytes} bytes"
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start + 1} of the line: the file must be UTF-8"
    if not text.strip():
        return None, ""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at column {exc.colno}: {exc.msg}"
    except (ValueError, RecursionError):
        return None, "invalid JSON: a value is too large or nested too deeply"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object per line, got {_kind(obj)}"
    return obj, ""


def validate_jsonl(stream: BinaryIO, *, declared_format: str | None = None, max_errors: int = 100,
                   min_examples: int = 3, max_line_bytes: int = MAX_LINE_BYTES) -> DatasetReport:
    """Read `stream` to its end and report on it (never raises on bad content)."""
    declared = declared_format if declared_format in FORMATS else None
    report = DatasetReport()
    fmt, first_line = declared, 0
    chars = 0
    unknown_top: dict[str, int] = {}
    unknown_msg: set[str] = set()

    def error(line: int, field_path: str, message: str) -> None:
        report.error_count += 1
        if len(report.errors) < max_errors:
            report.errors.append(LineError(line, field_path, message))

    reader = _Reader(stream, max_line_bytes)
    for lineno, raw in enumerate(reader, start=1):
        obj, why = _parse_line(raw, lineno, max_line_bytes)
        if obj is None:
            if why:
                report.example_count += 1
                error(lineno, "", why)
            continue
        report.example_count += 1
        kind = _line_format(obj)
        if kind is None:
            error(lineno, "", "neither 'messages' (CHAT) nor 'prompt'/'completion' (COMPLETION) found")
            continue
        if kind == "BOTH":
            error(lineno, "", "has both 'messages' and 'prompt'/'completion': one example, one format")
            continue
        if fmt is None:
            fmt, first_line = kind, lineno
        elif (CHAT if fmt == RL else fmt) != kind:
            origin = "was declared" if declared else f"was set by line {first_line}"
            error(lineno, "messages" if kind == CHAT else "prompt",
                  f"a {kind} example in a {fmt} dataset (the format {origin}); one file holds one format")
            continue
        issues = _Issues()
        if kind == CHAT:
            check_chat(obj, issues, require_assistant=fmt != RL, unknown_message_keys=unknown_msg)
        else:
            check_completion(obj, issues)
        for field_path, message in issues.items:
            error(lineno, field_path, message)
        if not issues.items:
            chars += issues.chars
            report.message_count += issues.messages
        if fmt != RL:
            for key in obj.keys() - _KNOWN_KEYS[kind]:
                unknown_top.setdefault(key, lineno)

    if report.example_count < min_examples:
        error(0, "", f"the dataset has {report.example_count} example(s); at least {min_examples} are required")
    report.format = fmt
    report.estimated_token_count = -(-chars // CHARS_PER_TOKEN)
    report.size_bytes, report.sha256 = reader.size, reader.digest.hexdigest()
    report.warnings = [f"unknown field {k[:64]!r} ignored (first on line {n})"
                       for k, n in list(unknown_top.items())[:MAX_WARNINGS]]
    if unknown_msg and len(report.warnings) < MAX_WARNINGS:
        report.warnings.append("unknown message fields ignored: " + ", ".join(sorted(k[:64] for k in unknown_msg)[:10]))
    return report
