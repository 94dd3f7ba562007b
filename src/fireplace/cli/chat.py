"""chat MODEL: a streaming chat REPL (or one message with -m, or the whole of stdin when piped);
complete MODEL PROMPT: a raw completion. Both stream the OpenAI-shaped SSE of the data plane.

REPL commands: /reset (forget the conversation), /system TEXT (set the system prompt and
reset), /exit (or Ctrl-D). A bare model ID is looked up in your account, then in the public
catalog (accounts/fireplace/models/ID), among the models this key can call.
"""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from fireplace import errors
from fireplace.cli.grammar import top
from fireplace.cli.output import dump, is_terminal, note
from fireplace.cli.session import Session, current
from fireplace.client import chunk_text

PUBLIC_ACCOUNT = "fireplace"
Temperature = Annotated[Optional[float], typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature.")]
MaxTokens = Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="Most tokens to generate.")]
TopP = Annotated[Optional[float], typer.Option("--top-p", min=0.0, max=1.0)]
TopK = Annotated[Optional[int], typer.Option("--top-k", min=0)]
Seed = Annotated[Optional[int], typer.Option("--seed", help="For reproducible sampling.")]
HELP = "/reset forgets the conversation, /system TEXT sets the system prompt, /exit (or Ctrl-D) quits"


def resolve_model(s: Session, model: str) -> str:
    """A bare ID -> the full name of what this key can call (GET /v1/models, open to every role):
    the account's own model first, then the public catalog's; a full name is kept as given."""
    if "/" in model:
        return model
    try:
        callable_ids = [m.get("id", "") for m in s.client.inference.models()]
    except errors.FireplaceError:
        callable_ids = []
    own = s.client.models.name(model)
    public = f"accounts/{PUBLIC_ACCOUNT}/models/{model}"
    for candidate in (own, public):
        if candidate in callable_ids:
            return candidate
    matches = [i for i in callable_ids if i.endswith(f"/models/{model}")]
    return matches[0] if len(matches) == 1 else own


def _stream_reply(s: Session, model: str, messages: list[dict], params: dict) -> str:
    """Print the reply as it arrives; returns its whole text."""
    parts = []
    for chunk in s.client.inference.chat_stream(model, messages, **params):
        text = chunk_text(chunk)
        if text:
            parts.append(text)
            sys.stdout.write(text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


def _one_shot(s: Session, model: str, messages: list[dict], params: dict) -> None:
    if s.options.output in ("json", "yaml"):
        dump(s.client.inference.chat(model, messages, **params), s.options.output)
        return
    _stream_reply(s, model, messages, params)


def _repl(s: Session, model: str, system: Optional[str], params: dict) -> None:
    def fresh() -> list[dict]:
        return [{"role": "system", "content": system}] if system else []
    history = fresh()
    note(f"chatting with {model}; {HELP}")
    while True:
        try:
            line = input("> " if is_terminal() else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = fresh()
            note("(conversation reset)")
            continue
        if text == "/system" or text.startswith("/system "):
            system = text[len("/system"):].strip() or None
            history = fresh()
            note(f"(system prompt {'set' if system else 'cleared'}; conversation reset)")
            continue
        if text.startswith("/"):
            note(f"unknown command {text.split()[0]}: {HELP}")
            continue
        history.append({"role": "user", "content": line})
        try:
            reply = _stream_reply(s, model, history, params)
        except errors.FireplaceError as exc:
            history.pop()
            note(f"Error: {exc.message}")
            continue
        history.append({"role": "assistant", "content": reply})


@top("chat", "fireplace chat accounts/fireplace/models/smollm2-135m-instruct\n"
             "fireplace chat smollm2-135m-instruct -m 'Write a haiku about fire' --max-tokens 40\n"
             "echo 'Summarize: ...' | fireplace chat my-lora --temperature 0")
def chat(
    model: Annotated[str, typer.Argument(help="Model: ID (yours, else the public catalog's) or full name.")],
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="Send this one message and exit.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="The REPL even when stdin is not a "
                                              "terminal.")] = False,
    temperature: Temperature = None, max_tokens: MaxTokens = None, top_p: TopP = None, top_k: TopK = None,
    seed: Seed = None,
) -> None:
    """Chat with a model: a streaming REPL; -m TEXT (or text piped in) sends one message."""
    s = current()
    model = resolve_model(s, model)
    params = {"temperature": temperature, "max_tokens": max_tokens, "top_p": top_p, "top_k": top_k, "seed": seed}
    if message is None and not interactive and not sys.stdin.isatty():
        message = sys.stdin.read()
        if not message.strip():
            raise errors.InvalidArgument("stdin was empty: nothing to send")
    if message is not None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
        _one_shot(s, model, messages, params)
        return
    _repl(s, model, system, params)


@top("complete", "fireplace complete smollm2-135m-instruct 'The capital of France is' --max-tokens 8")
def complete(
    model: Annotated[str, typer.Argument(help="Model: ID (yours, else the public catalog's) or full name.")],
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt (default: stdin).")] = None,
    temperature: Temperature = None, max_tokens: MaxTokens = None, top_p: TopP = None, top_k: TopK = None,
    seed: Seed = None,
    echo: Annotated[bool, typer.Option("--echo", help="Print the prompt before the completion.")] = False,
) -> None:
    """A raw text completion (no chat template), streamed to stdout."""
    s = current()
    model = resolve_model(s, model)
    if prompt is None:
        prompt = sys.stdin.read()
    params = {"temperature": temperature, "max_tokens": max_tokens, "top_p": top_p, "top_k": top_k, "seed": seed}
    if s.options.output in ("json", "yaml"):
        dump(s.client.inference.complete(model, prompt, echo=echo or None, **params), s.options.output)
        return
    if echo:
        sys.stdout.write(prompt)
    for chunk in s.client.inference.complete_stream(model, prompt, **params):
        sys.stdout.write(chunk_text(chunk))
        sys.stdout.flush()
    sys.stdout.write("\n")
