"""proto3-JSON conventions of the Fireworks API, as pydantic building blocks.

- lowerCamelCase field names (snake_case also accepted on input),
- unknown fields on input ignored (output-only fields a client echoes back are harmless);
  SDK fields Fireplace does not honour are refused by name (`refuse_unhonoured`),
- int64 as strings (`Int64`, range-checked), RFC 3339 UTC times (`rfc3339`), enums as strings,
- no NaN or Infinity anywhere (JSON has none; PostgreSQL's JSON refuses them),
- free-form JSON objects bounded in size and depth (`BoundedJson`),
- every resource has `status {code, message}`.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator
from pydantic.alias_generators import to_camel

from fireplace.errors import InvalidArgument

MAX_STRING = 4096


class Wire(BaseModel):
    """Base of every request/response body."""
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore",
                              str_max_length=MAX_STRING, allow_inf_nan=False)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _int64_in(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, str):
        v = v.strip()
        if not v.lstrip("-").isascii() or not v.lstrip("-").isdigit() or len(v) > 20:
            raise ValueError("expected an integer (int64 as a string)")
        v = int(v)
    if isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX:
        raise ValueError("out of the int64 range")
    return v


# int64 on the wire: accepted as number or string, always written as a string; the schema states
# the range (the check itself is _int64_in's, with its own message).
Int64 = Annotated[int, BeforeValidator(_int64_in), PlainSerializer(lambda v: str(v), return_type=str),
                  Field(json_schema_extra={"minimum": INT64_MIN, "maximum": INT64_MAX})]

MAX_JSON_FIELD_BYTES = 64 << 10
MAX_JSON_DEPTH = 16


def check_json_value(value: Any, what: str = "value", *, max_bytes: int = MAX_JSON_FIELD_BYTES,
                     max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A free-form JSON value stored as given: at most max_depth levels, max_bytes when
    serialized, finite numbers, integers within int64. Raises ValueError naming the problem."""
    import json
    import math

    budget = [max_bytes]

    def walk(node: Any, depth: int) -> None:
        if depth > max_depth:
            raise ValueError(f"{what} is nested deeper than {max_depth} levels")
        budget[0] -= 8
        if budget[0] < 0:
            raise ValueError(f"{what} is larger than {max_bytes} bytes")
        if isinstance(node, dict):
            for key, item in node.items():
                budget[0] -= len(str(key))
                walk(item, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)
        elif isinstance(node, str):
            budget[0] -= len(node)
        elif isinstance(node, bool) or node is None:
            pass
        elif isinstance(node, int):
            if not INT64_MIN <= node <= INT64_MAX:
                raise ValueError(f"{what} holds an integer outside the int64 range")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError(f"{what} holds NaN or Infinity, which JSON does not allow")
        else:
            raise ValueError(f"{what} holds a value that is not JSON")
    walk(value, 0)
    if len(json.dumps(value, separators=(",", ":"))) > max_bytes:
        raise ValueError(f"{what} is larger than {max_bytes} bytes")
    return value


# A free-form JSON object (userUploaded, evalProtocol ...): bounded in size and depth.
BoundedJson = Annotated[dict[str, Any], AfterValidator(lambda v: check_json_value(v, "the object"))]


def rfc3339(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(value: str, what: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be an RFC 3339 time, got {str(value)[:64]!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_duration(value: str | None, what: str) -> float | None:
    """proto Duration JSON: '30s', '1.5s'. Returns seconds."""
    if value is None:
        return None
    if isinstance(value, str) and value.endswith("s"):
        try:
            seconds = float(value[:-1])
            if seconds >= 0:
                return seconds
        except ValueError:
            pass
    raise InvalidArgument(f"{what} must be a duration like '30s', got {str(value)[:64]!r}")


def duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds}s"


def _is_set(value: Any) -> bool:
    return value is not None and value is not False and value not in ("", 0, [], {})


def refuse_unhonoured(data: Any, unhonoured: dict[str, str], what: str) -> Any:
    """A model_validator(mode="before") body check: Fireworks fields Fireplace accepts nowhere
    (unhonoured: camelCase wire name -> why) are refused with a 400 naming each one set,
    instead of being silently dropped like output-only fields a client echoes back."""
    if isinstance(data, dict):
        found = []
        for camel, reason in unhonoured.items():
            for key in (camel, to_snake(camel)):
                if key in data and _is_set(data[key]):
                    found.append(f"{camel} ({reason})")
                    break
        if found:
            raise InvalidArgument(f"{what}: field(s) not supported by Fireplace: {'; '.join(found)}; "
                                  "omit them")
    return data


class Status(Wire):
    code: str = "OK"
    message: str = ""


class Empty(Wire):
    pass


def status(code: str = "OK", message: str = "") -> dict[str, str]:
    return {"code": code, "message": message}


Str = Annotated[str, Field(max_length=MAX_STRING)]
FILENAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"


def documented(pattern: str) -> dict:
    """json_schema_extra stating a pattern the service itself checks (with its own message)."""
    return {"pattern": pattern}


# json_schema_extra of a {file name: size} map: the keys are flat file names (checked by
# storage.blobs.safe_filename, which names the bad one).
FILE_MAP = {"propertyNames": {"pattern": FILENAME_PATTERN}}


def to_snake(name: str) -> str:
    """'displayName' -> 'display_name' (filters and update masks use snake_case)."""
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_" + ch.lower())
        else:
            out.append(ch)
    return "".join(out).lstrip("_")


class DisplayNameUpdate(Wire):
    """PATCH body of accounts, API keys and SFT jobs, whose only mutable field is displayName
    (control.common.rename). Any other field set is a 400 naming it, since nothing else of
    these resources can change after create (a job's training settings: create a new job)."""
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    display_name: str | None = Field(None, max_length=256)
    etag: str | None = Field(None, max_length=64)   # AIP-154: a stale one is 409 ABORTED
    name: str | None = Field(None, max_length=MAX_STRING)   # echoed back by some clients; ignored

    @model_validator(mode="before")
    @classmethod
    def _only_display_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            other = sorted(k for k, v in data.items()
                           if k not in ("displayName", "display_name", "etag", "name") and _is_set(v))
            if other:
                raise InvalidArgument(f"field(s) {', '.join(other)} cannot be changed; updatable: displayName")
        return data
