"""Reading the usage the replica reports, for metering, without changing what the client gets.

Non-streaming answers carry `usage`. A stream carries it only in a final chunk
(`{"choices": [], "usage": {...}}`, before `data: [DONE]`) that the replica sends when asked
(`stream_options.include_usage`, or `perf_metrics_in_response`). So for a stream the gateway
always asks, and drops that chunk again when the client had not asked for it:

    body, strip = ask_for_usage(body)      # body: the bytes to send upstream
    events = UsageEvents(strip)
    for raw in upstream: yield events.feed(raw)      # whole SSE events, the usage one perhaps dropped
    events.usage                                     # the reported usage, or None
"""
from __future__ import annotations

import json

EVENT_END = b"\n\n"


def ask_for_usage(raw: bytes, body: dict) -> tuple[bytes, bool]:
    """(the body to send upstream, whether to strip the usage chunk from the client's stream).
    A body whose stream fields are not what the protocol allows goes unchanged: the replica
    refuses it with its own message."""
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return raw, False
    wanted = options.get("include_usage")
    if wanted is True or body.get("perf_metrics_in_response") is True:
        return raw, False          # the client gets the chunk anyway
    if wanted not in (None, False):
        return raw, False
    asked = {**body, "stream_options": {**options, "include_usage": True}}
    return json.dumps(asked, separators=(",", ":")).encode(), True


def usage_of(event: bytes) -> dict | None:
    """The usage object of a `data: {...}` SSE event that is the final usage chunk, else None."""
    if not event.startswith(b"data: {") or b'"usage"' not in event:
        return None
    try:
        obj = json.loads(event[len(b"data: "):])
    except (ValueError, RecursionError):
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if isinstance(usage, dict) and obj.get("choices") == []:
        return usage
    return None


class UsageEvents:
    """Re-frames a byte stream into whole SSE events, noting (and maybe dropping) the usage one."""

    def __init__(self, strip: bool):
        self.strip = strip
        self.usage: dict | None = None
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        """The complete events in data (and what was buffered before); a partial event waits."""
        self._buffer += data
        end = self._buffer.rfind(EVENT_END)
        if end < 0:
            return b""
        complete, self._buffer = self._buffer[:end + len(EVENT_END)], self._buffer[end + len(EVENT_END):]
        if b'"usage"' not in complete:
            return complete
        out = []
        for event in complete.split(EVENT_END)[:-1]:
            usage = usage_of(event)
            if usage is not None:
                self.usage = usage
                if self.strip:
                    continue
            out.append(event + EVENT_END)
        return b"".join(out)

    def rest(self) -> bytes:
        """Whatever trailed the last complete event (passed on as it came)."""
        rest, self._buffer = self._buffer, b""
        return rest
