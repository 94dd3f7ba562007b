"""model: create (optionally uploading a directory), upload, get, list, update, delete, download.

A directory with adapter_config.json is a LoRA addon (HF_PEFT_ADDON; --base-model names its
base); otherwise a base model (HF_BASE_MODEL: config.json + *.safetensors).

Uploads resume: run an interrupted `create model ID DIR` (or `upload model`) again and the files
the server already holds intact are skipped; `create` then continues with the model it made,
as long as it is still UPLOADING and of the same kind (and base model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fireplace.cli.grammar import verb
from fireplace.cli.output import Column, Kind, ident, note, short_id, state, when
from fireplace.cli.progress import transfer_progress
from fireplace.cli.resources.common import completer
from fireplace.cli.resources.crud import delete_command, get_command, in_account, list_command, ref
from fireplace.cli.session import Session, current
from fireplace.client import transfers
from fireplace.errors import AlreadyExists, InvalidArgument

MODEL = Kind("Model", (ident(), Column("KIND", "kind"), state(), Column("BASE MODEL", "peftDetails.baseModel", short_id),
                       when()))
ModelRef = Annotated[str, typer.Argument(help="Model ID or full name (accounts/A/models/M).",
                                          autocompletion=completer("models", "models"))]
Dir = Annotated[Path, typer.Argument(help="Directory of HF files (config.json + *.safetensors, or an adapter).",
                                     file_okay=False)]
DisplayName = Annotated[Optional[str], typer.Option("--display-name")]
Description = Annotated[Optional[str], typer.Option("--description")]
Public = Annotated[Optional[bool], typer.Option("--public/--private", help="Readable by every account.",
                                                 show_default=False)]


def _upload(s: Session, model: str, directory: Path) -> dict:
    with transfer_progress("uploading") as progress:
        answer = transfers.upload_model(s.client, model, directory, progress,
                                        skipped=lambda name: note(f"{name}: already uploaded, skipped"))
    for warning in answer.get("warnings", []):
        note(f"warning: {warning}")
    return s.client.models.get(model)


@verb("create", "model", "fireplace create model my-lora ./adapter --base-model accounts/me/models/base\n"
                         "fireplace create model my-base ./hf-model")
def create_model(
    model_id: Annotated[str, typer.Argument(help="New model ID.")],
    directory: Annotated[Optional[Path], typer.Argument(help="Upload this directory right away.", file_okay=False)] = None,
    base_model: Annotated[Optional[str], typer.Option("--base-model", help="An addon's base model.")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="HF_BASE_MODEL or HF_PEFT_ADDON (default: "
                                                "from the directory).")] = None,
    display_name: DisplayName = None, description: Description = None, public: Public = None,
    context_length: Annotated[Optional[int], typer.Option("--context-length", min=1)] = None,
) -> None:
    """Create a model; with DIR also upload its files (a progress bar per file) and validate them."""
    if kind is None:
        is_addon = bool(base_model) or (directory is not None and (directory / "adapter_config.json").is_file())
        kind = "HF_PEFT_ADDON" if is_addon else "HF_BASE_MODEL"
    if kind == "HF_PEFT_ADDON" and not base_model:
        raise InvalidArgument("a LoRA addon needs --base-model (the model it was trained on)")
    if directory is not None:
        transfers.model_files(directory)  # refuse a bad directory before creating anything
    body = {k: v for k, v in {"kind": kind, "displayName": display_name, "description": description,
                              "public": public, "contextLength": context_length}.items() if v is not None}
    if base_model:
        body["peftDetails"] = {"baseModel": base_model}
    s = current()
    try:
        model = s.client.models.create(model_id, body)
    except AlreadyExists:
        model = _resumable(s, model_id, kind, base_model) if directory is not None else None
        if model is None:
            raise
        note(f"{model['name']} exists and is still UPLOADING: resuming its upload")
    if directory is not None:
        model = _upload(s, model["name"], directory)
    s.printer.one(model, MODEL)


def _resumable(s: Session, model_id: str, kind: str, base_model: Optional[str]) -> Optional[dict]:
    """The existing model an interrupted `create model ID DIR` made, if this run can go on with
    it: still UPLOADING, same kind, same base model."""
    model = s.client.models.get(model_id)
    same_base = not base_model or (model.get("peftDetails") or {}).get("baseModel") == s.client.models.name(base_model)
    return model if model.get("state") == "UPLOADING" and model.get("kind") == kind and same_base else None


@verb("upload", "model", "fireplace upload model my-lora ./adapter")
def upload_model(model: ModelRef, directory: Dir) -> None:
    """Upload a directory to a model that is UPLOADING; run again after an interruption, it sends
    only the files the server does not already hold intact."""
    s = current()
    s.printer.one(_upload(s, model, directory), MODEL)


get_command("model", ref("model", ModelRef), lambda c: c.models, MODEL, "Show a model.",
            "fireplace get model my-lora\nfireplace get model accounts/fireplace/models/smollm2-135m-instruct -o json")
list_command("model", in_account("models"), "models", MODEL, "List the account's models.",
             "fireplace list models\nfireplace list models --filter 'kind=\"HF_PEFT_ADDON\"' --all -q\n"
             "fireplace list models --account fireplace")


@verb("update", "model", "fireplace update model my-lora --display-name 'Support bot v2' --public")
def update_model(model: ModelRef, display_name: DisplayName = None, description: Description = None,
                 public: Public = None,
                 context_length: Annotated[Optional[int], typer.Option("--context-length", min=1)] = None) -> None:
    """Change a model's display name, description, visibility or context length."""
    fields = {k: v for k, v in {"displayName": display_name, "description": description, "public": public,
                                "contextLength": context_length}.items() if v is not None}
    if not fields:
        raise typer.BadParameter("nothing to change: give --display-name, --description, --public or --context-length")
    s = current()
    s.printer.one(s.client.models.update(model, fields), MODEL)


delete_command("model", ref("model", ModelRef), lambda c: c.models,
               "Delete a model and its files (refused while it is deployed or being trained).",
               "fireplace delete model my-lora")


@verb("download", "model", "fireplace download model my-lora ./my-lora")
def download_model(model: ModelRef, directory: Dir) -> None:
    """Download a READY model's files into DIR (created if missing)."""
    s = current()
    urls = s.client.models.download_endpoints(model)
    with transfer_progress("downloading") as progress:
        paths = transfers.download(s.client, urls, directory, progress)
    if s.structured:
        for path in paths:
            typer.echo(str(path))
    else:
        note(f"{len(paths)} files in {directory}")
