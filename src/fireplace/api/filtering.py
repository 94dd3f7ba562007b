"""AIP-160 filter subset -> SQLAlchemy expression.

Grammar (snake_case field names; values quoted strings, numbers, true/false, bare words):
    expr       := and_expr ("OR" and_expr)*
    and_expr   := unary ("AND" unary)*
    unary      := "NOT" unary | "-" unary | "(" expr ")" | comparison
    comparison := field ("=" | "!=" | "<" | ">" | "<=" | ">=") value
Anything else (has-operator ':', functions, wildcards) is a clear 400.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import String, and_, literal, not_, or_
from sqlalchemy.sql import ColumnElement

from fireplace.errors import InvalidArgument

_TOKEN_RE = re.compile(r"""
    \s*(?:
      (?P<lp>\() | (?P<rp>\)) |
      (?P<op><=|>=|!=|=|<|>) |
      (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
      (?P<word>[A-Za-z_][A-Za-z0-9_.]*|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?) |
      (?P<neg>-) |
      (?P<bad>\S)
    )""", re.VERBOSE)

MAX_FILTER_DEPTH = 32


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class BoolOp:
    op: str  # "AND" | "OR"
    items: tuple


@dataclass(frozen=True)
class Not:
    item: Any


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            break
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            continue
        if kind == "bad":
            raise InvalidArgument(f"invalid filter: unsupported character {m.group(kind)!r} at offset {m.start(kind)}")
        out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise InvalidArgument("invalid filter: unexpected end of expression")
        self.i += 1
        return tok

    def parse(self):
        if not self.toks:
            return None
        node = self.expr()
        if self.peek() is not None:
            raise InvalidArgument(f"invalid filter: unexpected {self.peek()[1]!r}")
        return node

    def expr(self):
        items = [self.and_expr()]
        while self.peek() == ("word", "OR"):
            self.take()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else BoolOp("OR", tuple(items))

    def and_expr(self):
        items = [self.unary()]
        while self.peek() == ("word", "AND"):
            self.take()
            items.append(self.unary())
        return items[0] if len(items) == 1 else BoolOp("AND", tuple(items))

    def unary(self):
        self.depth += 1
        if self.depth > MAX_FILTER_DEPTH:
            raise InvalidArgument("invalid filter: nested too deeply")
        try:
            tok = self.peek()
            if tok in (("word", "NOT"), ("neg", "-")):
                self.take()
                return Not(self.unary())
            if tok == ("lp", "("):
                self.take()
                node = self.expr()
                if self.take() != ("rp", ")"):
                    raise InvalidArgument("invalid filter: expected ')'")
                return node
            return self.comparison()
        finally:
            self.depth -= 1

    def comparison(self):
        kind, field = self.take()
        if kind != "word" or field in ("AND", "OR", "NOT") or field[0].isdigit() or field[0] == "-":
            raise InvalidArgument(f"invalid filter: expected a field name, got {field!r}")
        kind, op = self.take()
        if kind != "op":
            raise InvalidArgument(f"invalid filter: expected a comparison operator after {field!r}, got {op!r}"
                                  " (supported: = != < > <= >=)")
        kind, raw = self.take()
        if kind == "str":
            value: Any = _unquote(raw)
        elif kind == "word":
            value = raw
        else:
            raise InvalidArgument(f"invalid filter: expected a value after {field} {op}")
        return Comparison(field, op, value)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _unquote(raw: str) -> str:
    """'"a\\"b"' -> 'a"b': backslash escapes a quote, a backslash, n, t, r; any other char as itself."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw[1:-1], flags=re.S)


def parse_filter(text: str | None, max_chars: int = 1024):
    """Parse into an AST (None for an empty filter)."""
    if not text or not text.strip():
        return None
    if len(text) > max_chars:
        raise InvalidArgument(f"invalid filter: longer than {max_chars} characters")
    return _Parser(text).parse()


# field name -> (column, converter from the filter's literal to the column's type)
FieldMap = dict[str, tuple[Any, Callable[[Any], Any]]]


def as_str(v: Any) -> str:
    return str(v)


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def as_int(v: Any) -> int:
    """An int64 literal (columns are at most BIGINT; a larger number is a 400, not an overflow)."""
    text = str(v)
    if len(text) > 20 or not text.lstrip("-").isdigit() or not text.isascii():
        raise InvalidArgument(f"invalid filter: {text[:40]!r} is not an integer")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidArgument(f"invalid filter: {text[:40]} is outside the int64 range")
    return value


def as_bool(v: Any) -> bool:
    if str(v).lower() in ("true", "false"):
        return str(v).lower() == "true"
    raise InvalidArgument(f"invalid filter: {v!r} is not true or false")


def as_time(v: Any) -> datetime:
    from fireplace.api.wire import parse_rfc3339
    return parse_rfc3339(str(v), "filter time value")


_OPS = {"=": lambda c, v: c == v, "!=": lambda c, v: c != v, "<": lambda c, v: c < v,
        ">": lambda c, v: c > v, "<=": lambda c, v: c <= v, ">=": lambda c, v: c >= v}


def compile_filter(node, fields: FieldMap) -> ColumnElement | None:
    if node is None:
        return None
    if isinstance(node, BoolOp):
        parts = [compile_filter(i, fields) for i in node.items]
        return and_(*parts) if node.op == "AND" else or_(*parts)
    if isinstance(node, Not):
        return not_(compile_filter(node.item, fields))
    if node.field not in fields:
        raise InvalidArgument(f"invalid filter: unsupported field {node.field!r}; "
                              f"supported: {', '.join(sorted(fields))}")
    column, convert = fields[node.field]
    if isinstance(convert, FullName):
        return convert.compare(node.op, column, str(node.value))
    return _OPS[node.op](column, convert(node.value))


class FullName:
    """The converter of a `name` field: a full name ('accounts/a/models/m') compares with the
    row's full name, so another account's name matches nothing; a bare ID ('m') compares
    with the ID column. `parts` spell the full name: literal strings and columns in order."""

    def __init__(self, *parts: Any):
        self.parts = parts

    def expression(self) -> ColumnElement:
        out = None
        for part in self.parts:
            piece = literal(part, String) if isinstance(part, str) else part
            out = piece if out is None else out + piece
        return out

    def compare(self, op: str, id_column: Any, value: str) -> ColumnElement:
        if "/" in value:
            return _OPS[op](self.expression(), value)
        return _OPS[op](id_column, value)

    def __call__(self, v: Any) -> str:
        return str(v)


def name_field(id_column: Any, *parts: Any) -> tuple[Any, FullName]:
    """FieldMap entry for `name`: name_field(ModelRow.model_id, "accounts/", ModelRow.account_id,
    "/models/", ModelRow.model_id)."""
    return id_column, FullName(*parts)
