"""proto3-JSON conventions of the Fireworks API, as pydantic building blocks.

- lowerCamelCase field names (snake_case also accepted on input),
- unknown fields on input ignored (output-only fields a client echoes back are harmless),
- int64 as strings (`Int64`), RFC 3339 UTC times (`rfc3339`), enums as strings,
- every resource has `status {code, message}`.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from fireplace.errors import InvalidArgument

MAX_STRING = 4096


class Wire(BaseModel):
    """Base of every request/response body."""
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore",
                              str_max_length=MAX_STRING)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _int64_in(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, str):
        v = v.strip()
        if not v.lstrip("-").isdigit():
            raise ValueError("expected an integer (int64 as a string)")
        return int(v)
    return v


# int64 on the wire: accepted as number or string, always written as a string.
Int64 = Annotated[int, BeforeValidator(_int64_in), PlainSerializer(lambda v: str(v), return_type=str)]


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


class Status(Wire):
    code: str = "OK"
    message: str = ""


class Empty(Wire):
    pass


def status(code: str = "OK", message: str = "") -> dict[str, str]:
    return {"code": code, "message": message}


Str = Annotated[str, Field(max_length=MAX_STRING)]


def to_snake(name: str) -> str:
    """'displayName' -> 'display_name' (filters and update masks use snake_case)."""
    out = []
    for ch in name:
        if ch.isupper():
            out.append("_" + ch.lower())
        else:
            out.append(ch)
    return "".join(out).lstrip("_")
