"""dataset: create (upload a JSONL with a progress bar), upload, get, list, update, delete, download.

A file that does not validate is refused with the server's line-numbered errors on stderr and
exit status 3; `create dataset` then removes the empty dataset it made, so the same command
can simply be run again once the file is fixed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fireplace import errors
from fireplace.cli.grammar import verb
from fireplace.cli.output import Column, Kind, ident, note, state, when
from fireplace.cli.progress import transfer_progress
from fireplace.cli.resources.common import completer
from fireplace.cli.resources.crud import delete_command, get_command, in_account, list_command, ref
from fireplace.cli.session import Session, current
from fireplace.client import transfers

DATASET = Kind("Dataset", (ident(), Column("FORMAT", "format"), state(), Column("EXAMPLES", "exampleCount"),
                           Column("TOKENS", "estimatedTokenCount"), when()))
DatasetRef = Annotated[str, typer.Argument(help="Dataset ID or full name.",
                                            autocompletion=completer("datasets", "datasets"))]
File = Annotated[Path, typer.Argument(help="JSONL file: one example per line (messages, or prompt/completion).",
                                      dir_okay=False)]
Format = Annotated[Optional[str], typer.Option("--format", help="CHAT or COMPLETION (default: from the file).")]


def _upload(s: Session, dataset: str, path: Path) -> dict:
    with transfer_progress("uploading") as progress:
        return transfers.upload_dataset(s.client, dataset, path, progress)


@verb("create", "dataset", "fireplace create dataset support-chats ./train.jsonl")
def create_dataset(dataset_id: Annotated[str, typer.Argument(help="New dataset ID.")], path: File,
                   format: Format = None,
                   display_name: Annotated[Optional[str], typer.Option("--display-name")] = None) -> None:
    """Create a dataset and upload its JSONL file; every line is validated by the server."""
    if not path.is_file():
        raise errors.InvalidArgument(f"{path}: no such file")
    fields = {k: v for k, v in {"format": format, "displayName": display_name}.items() if v is not None}
    s = current()
    created = s.client.datasets.create(dataset_id, {"userUploaded": {}, **fields})
    try:
        dataset = _upload(s, created["name"], path)
    except (errors.InvalidArgument, errors.FailedPrecondition, errors.PayloadTooLarge):
        s.client.datasets.delete(created["name"])
        raise
    s.printer.one(dataset, DATASET)


@verb("upload", "dataset", "fireplace upload dataset support-chats ./train.jsonl")
def upload_dataset(dataset: DatasetRef, path: File) -> None:
    """Upload the JSONL of a dataset that is still UPLOADING."""
    s = current()
    s.printer.one(_upload(s, dataset, path), DATASET)


get_command("dataset", ref("dataset", DatasetRef), lambda c: c.datasets, DATASET, "Show a dataset.",
            "fireplace get dataset support-chats")
list_command("dataset", in_account("datasets"), "datasets", DATASET, "List the account's datasets.",
             "fireplace list datasets\nfireplace list datasets --filter 'state=\"READY\"' --order-by 'create_time desc'")


@verb("update", "dataset", "fireplace update dataset support-chats --display-name 'Support chats (Nov)'")
def update_dataset(dataset: DatasetRef,
                   display_name: Annotated[Optional[str], typer.Option("--display-name")] = None) -> None:
    """Change a dataset's display name (its content never changes once READY)."""
    if display_name is None:
        raise typer.BadParameter("nothing to change: give --display-name")
    s = current()
    s.printer.one(s.client.datasets.update(dataset, {"displayName": display_name}), DATASET)


delete_command("dataset", ref("dataset", DatasetRef), lambda c: c.datasets,
               "Delete a dataset and its file (refused while a job uses it).", "fireplace delete dataset support-chats")


@verb("download", "dataset", "fireplace download dataset support-chats ./data")
def download_dataset(dataset: DatasetRef,
                     directory: Annotated[Path, typer.Argument(help="Where to write the file.", file_okay=False)]
                     = Path(".")) -> None:
    """Download a dataset's JSONL file into DIR (default: the current directory)."""
    s = current()
    urls = s.client.datasets.download_endpoints(dataset)
    with transfer_progress("downloading") as progress:
        paths = transfers.download(s.client, urls, directory, progress)
    for path in paths:
        typer.echo(str(path)) if s.structured else note(f"wrote {path}")
