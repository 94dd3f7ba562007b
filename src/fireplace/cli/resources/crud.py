"""The `get`, `list`, `delete` and rename-only `update` commands that only call the client and print, made from a
description instead of written out once per resource:

    get_command("model", ref("model", ModelRef), lambda c: c.models, MODEL, "Show a model.",
                "fireplace get model my-lora")
    list_command("model", in_account("models"), "models", MODEL, "List the account's models.", "...")
    delete_command("model", ref("model", ModelRef), lambda c: c.models, "Delete a model ...", "...")

A command's parameters are inspect.Parameters with typer's Annotated types, so its flags, help
and completion are exactly those of a hand-written function (cli.grammar registers it in both
word orders). Commands that do more (upload, wait, flags of their own) stay hand-written.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from fireplace.cli.grammar import verb
from fireplace.cli.output import Kind, note
from fireplace.cli.resources.common import AllPages, Filter, OrderBy, PageSize, PageToken, show_list
from fireplace.cli.session import Session, current

Accessor = Callable[[Any], Any]                    # the client -> one of its collections (c.models)
ListPath = Callable[[Session, dict], str]          # (session, the command's own options) -> list path
P = inspect.Parameter

LIST_PARAMS = (P("filter", P.KEYWORD_ONLY, default=None, annotation=Filter),
               P("order_by", P.KEYWORD_ONLY, default=None, annotation=OrderBy),
               P("page_size", P.KEYWORD_ONLY, default=None, annotation=PageSize),
               P("page_token", P.KEYWORD_ONLY, default=None, annotation=PageToken),
               P("all_pages", P.KEYWORD_ONLY, default=False, annotation=AllPages))
LIST_NAMES = tuple(p.name for p in LIST_PARAMS)


def ref(name: str, annotation: Any, default: Any = P.empty) -> P:
    """The positional argument naming the resource (its name is the help's metavar)."""
    return P(name, P.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)


def option(name: str, annotation: Any, default: Any = None) -> P:
    return P(name, P.KEYWORD_ONLY, default=default, annotation=annotation)


def in_account(collection: str) -> ListPath:
    """The collection in the current account: /v1/accounts/{a}/<collection>."""
    return lambda s, _options: s.client.collection_path(collection)


def _register(fn: Callable[..., None], verb_name: str, noun: str, params: Sequence[P], doc: str,
              example: str) -> Callable[..., None]:
    fn.__signature__ = inspect.Signature(list(params))  # type: ignore[attr-defined]
    fn.__doc__ = doc
    fn.__name__ = fn.__qualname__ = f"{verb_name}_{noun.replace('-', '_')}"
    return verb(verb_name, noun, example)(fn)


def get_command(noun: str, arg: P, resource: Accessor, kind: Kind, doc: str, example: str) -> Callable[..., None]:
    def get(**kwargs: Any) -> None:
        s = current()
        s.printer.one(resource(s.client).get(kwargs[arg.name]), kind)
    return _register(get, "get", noun, [arg], doc, example)


def list_command(noun: str, path: ListPath, items_key: str, kind: Kind, doc: str, example: str, *,
                 leading: Sequence[P] = (), options: Sequence[P] = (),
                 query: Callable[[dict], dict] = lambda _options: {}) -> Callable[..., None]:
    """The command's own flags come before (`leading`) or after (`options`) the paging ones;
    `query(own flags)` turns them into extra query parameters, `path(session, own flags)` may use
    them to find the collection."""
    def list_(**kwargs: Any) -> None:
        s = current()
        paging = {name: kwargs.pop(name) for name in LIST_NAMES}
        show_list(path(s, kwargs), items_key, kind, filter=paging["filter"], order_by=paging["order_by"],
                  page_size=paging["page_size"], page_token=paging["page_token"], all_pages=paging["all_pages"],
                  **query(kwargs))
    return _register(list_, "list", noun, [*leading, *LIST_PARAMS, *options], doc, example)


def delete_command(noun: str, arg: P, resource: Accessor, doc: str, example: str, *,
                   call: str = "delete", done: str = "deleted") -> Callable[..., None]:
    """Calls resource.<call>(ref) and notes '<done> <full name>'."""
    def delete(**kwargs: Any) -> None:
        s = current()
        collection = resource(s.client)
        getattr(collection, call)(kwargs[arg.name])
        note(f"{done} {collection.name(kwargs[arg.name])}")
    return _register(delete, "delete", noun, [arg], doc, example)


DisplayName = Annotated[str, typer.Option("--display-name", help="The new display name.")]


def rename_command(noun: str, params: Sequence[P], rename: Callable[[Session, dict], dict], kind: Kind,
                   doc: str, example: str) -> Callable[..., None]:
    """`update <noun> ... --display-name X` for resources whose only mutable field is displayName:
    rename(session, {param: value, "display_name": X}) makes the call and returns the resource."""
    def update(**kwargs: Any) -> None:
        s = current()
        s.printer.one(rename(s, kwargs), kind)
    return _register(update, "update", noun, [*params, option("display_name", DisplayName, P.empty)], doc, example)
