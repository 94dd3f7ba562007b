"""firectl's two word orders: every resource command is registered as `VERB NOUN`
(`fireplace create deployment`) and as `NOUN VERB` (`fireplace deployment create`), plus
plural and long noun spellings (`list models`, `get supervised-fine-tuning-job`) kept out of
the help. Commands without a noun (`chat`, `load-lora`, `whoami` ...) sit at the top.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from fireplace.cli.session import command

NOUNS = {  # noun -> (help, aliases)
    "account": ("Accounts (the top-level owner of everything else).", ["accounts"]),
    "user": ("Users of an account, with their roles.", ["users"]),
    "api-key": ("API keys of a user (the secret is shown once).", ["api-keys", "apikey", "apikeys"]),
    "model": ("Models: base models and LoRA addons.", ["models"]),
    "dataset": ("Datasets: JSONL training examples.", ["datasets"]),
    "deployment": ("Deployments: model servers for one base model.", ["deployments"]),
    "deployed-model": ("Models loaded into deployments (see load-lora).", ["deployed-models"]),
    "sftj": ("Supervised fine-tuning jobs.", ["sftjs", "supervised-fine-tuning-job",
                                             "supervised-fine-tuning-jobs"]),
    "quota": ("Quotas of an account.", ["quotas"]),
}
VERBS = {
    "create": "Create a resource.",
    "get": "Show one resource.",
    "list": "List resources (--filter, --order-by, --page-size, --all).",
    "update": "Change a resource's fields.",
    "delete": "Delete a resource.",
    "upload": "Upload files to a resource that is UPLOADING.",
    "download": "Download a resource's files.",
    "scale": "Set a deployment's replica count.",
    "undelete": "Bring a soft-deleted deployment, or a disabled user, back.",
    "cancel": "Cancel a fine-tuning job.",
    "resume": "Resume a failed, cancelled or paused fine-tuning job.",
}

_verb_apps: dict[str, typer.Typer] = {}
_noun_apps: dict[str, typer.Typer] = {}
_top: list[tuple[str, Callable[..., Any], str, str | None]] = []


def _app(table: dict[str, typer.Typer], name: str, help_text: str) -> typer.Typer:
    if name not in table:
        table[name] = typer.Typer(help=help_text, no_args_is_help=True)
    return table[name]


def examples(example: str) -> str:
    lines = [line.strip() for line in example.strip().splitlines() if line.strip()]
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


def verb(verb_name: str, noun: str, example: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn` as `VERB NOUN` and `NOUN VERB` (and the noun's aliases, hidden)."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = command(fn)
        epilog = examples(example)
        noun_help, aliases = NOUNS[noun]
        by_verb = _app(_verb_apps, verb_name, VERBS[verb_name])
        by_verb.command(noun, epilog=epilog)(wrapped)
        for alias in aliases:
            by_verb.command(alias, epilog=epilog, hidden=True)(wrapped)
        _app(_noun_apps, noun, noun_help).command(verb_name, epilog=epilog)(wrapped)
        return fn
    return register


def top(name: str, example: str, help_text: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command without a noun: `fireplace NAME ...`."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _top.append((name, command(fn), examples(example), help_text))
        return fn
    return register


def install(app: typer.Typer) -> None:
    """Add every verb group, noun group and top-level command to the root app."""
    import fireplace.cli.auth  # noqa: F401  (importing a module registers its commands)
    import fireplace.cli.chat  # noqa: F401
    import fireplace.cli.resources  # noqa: F401

    for name, fn, epilog, help_text in _top:
        app.command(name, epilog=epilog, help=help_text)(fn)
    for name, sub in _verb_apps.items():
        app.add_typer(sub, name=name, rich_help_panel="Resource verbs")
    for name, sub in _noun_apps.items():
        app.add_typer(sub, name=name, rich_help_panel="Resources")
        for alias in NOUNS[name][1]:
            app.add_typer(sub, name=alias, hidden=True)
