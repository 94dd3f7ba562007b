"""Register models whose files are already on this machine (the bundled catalog, fine-tuning
outputs) without the HTTP upload flow. Same checks as :validateUpload; idempotent.

    register_local_model(session, blobs, "fireplace", "smollm2-135m-instruct", "/path/to/dir",
                         kind="HF_BASE_MODEL", display_name="SmolLM2 135M Instruct", public=True)
    register_model_files(session, blobs, account, model, kind=..., ...)   # files already at
                         blob_key("models", account, model, <filename>), e.g. written by a trainer
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from fireplace.control.models.files import MAX_LORA_RANK, MIN_LORA_RANK, is_pickle
from fireplace.control.models.tables import (KIND_ADDON, KIND_BASE, KIND_EMBEDDING, STATE_READY, STATE_UPLOADING,
                                             ModelFileRow, ModelRow)
from fireplace.control.models.uploads import final_key, finalize
from fireplace.errors import InvalidArgument
from fireplace.ids import validate_id
from fireplace.storage import BlobStore, safe_filename
from fireplace.storage.blobs import BlobInfo


def register_local_model(session: Session, blobs: BlobStore, account_id: str, model_id: str,
                         directory: str | os.PathLike, *, kind: str = KIND_BASE, display_name: str = "",
                         description: str = "", max_file_bytes: int = 64 << 30, **fields: Any) -> ModelRow:
    """Copy a local model directory's top-level files into the blob store and make a READY
    model of them. A READY model of that name is returned unchanged."""
    existing = session.get(ModelRow, (account_id, model_id))
    if existing is not None and existing.state == STATE_READY:
        return existing
    directory = Path(directory)
    infos = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.is_symlink() or path.name.startswith(".") or is_pickle(path.name):
            continue
        safe_filename(path.name)
        with path.open("rb") as f:
            infos.append(blobs.write_file(final_key(account_id, model_id, path.name), f, max_file_bytes))
    return _register(session, blobs, account_id, model_id, infos, kind=kind, display_name=display_name,
                     description=description, imported_from=fields.pop("imported_from", str(directory)),
                     **fields)


def register_model_files(session: Session, blobs: BlobStore, account_id: str, model_id: str, *,
                         kind: str = KIND_ADDON, display_name: str = "", description: str = "",
                         **fields: Any) -> ModelRow:
    """Make a READY model of the files already stored under blob_key("models", account, model)."""
    existing = session.get(ModelRow, (account_id, model_id))
    if existing is not None and existing.state == STATE_READY:
        return existing
    prefix = f"models/{account_id}/{model_id}/"
    infos = []
    for key in blobs.list(f"models/{account_id}/{model_id}"):
        filename = key[len(prefix):]
        if "/" in filename:
            continue
        infos.append(BlobInfo(key, blobs.size(key), ""))
    return _register(session, blobs, account_id, model_id, infos, kind=kind, display_name=display_name,
                     description=description, **fields)


def _register(session: Session, blobs: BlobStore, account_id: str, model_id: str, infos: list[BlobInfo], *,
              kind: str, display_name: str, description: str, base_model: str = "", r: int | None = None,
              target_modules: list[str] | None = None, public: bool = False, created_by: str = "",
              fine_tuning_job: str | None = None, imported_from: str | None = None,
              context_length: int | None = None, conversation_config: dict | None = None,
              supports_serverless: bool | None = None) -> ModelRow:
    validate_id(account_id, "account id")
    validate_id(model_id, "model id")
    if kind not in (KIND_BASE, KIND_ADDON, KIND_EMBEDDING):
        raise InvalidArgument(f"kind {kind!r} is not supported")
    if kind == KIND_ADDON and not base_model:
        raise InvalidArgument("an addon needs base_model (a full model name)")
    if r is not None and not MIN_LORA_RANK <= r <= MAX_LORA_RANK:
        raise InvalidArgument(f"r must be from {MIN_LORA_RANK} to {MAX_LORA_RANK}, got {r}")
    spec: dict[str, Any] = {"description": description} if description else {}
    for key, value in (("fine_tuning_job", fine_tuning_job), ("imported_from", imported_from),
                       ("context_length", context_length), ("conversation_config", conversation_config),
                       ("supports_serverless", supports_serverless)):
        if value is not None:
            spec[key] = value
    if kind == KIND_ADDON:
        base = _row_by_name(session, base_model)
        spec["peft_details"] = {"r": r, "target_modules": list(target_modules or []),
                                "base_model_type": ((base.spec if base else {}).get("base_model_details")
                                                    or {}).get("model_type")}
        spec["supports_lora"] = True
    row = session.get(ModelRow, (account_id, model_id))
    if row is None:
        from fireplace.control.fine_tuning.usage import require_unclaimed
        require_unclaimed(session, f"accounts/{account_id}/models/{model_id}", by_job=fine_tuning_job)
        row = ModelRow(account_id=account_id, model_id=model_id)
        session.add(row)
    row.kind, row.state, row.display_name, row.public = kind, STATE_UPLOADING, display_name, public
    row.base_model = base_model if kind == KIND_ADDON else ""
    row.created_by, row.spec = created_by, spec
    session.flush()
    for info in infos:
        filename = info.key.rsplit("/", 1)[-1]
        file = session.get(ModelFileRow, (account_id, model_id, filename))
        if file is None:
            file = ModelFileRow(account_id=account_id, model_id=model_id, filename=filename)
            session.add(file)
        file.declared_size, file.size, file.sha256, file.staged_key = info.size, info.size, info.sha256, ""
    finalize(session, blobs, row, {i.key.rsplit("/", 1)[-1]: i.key for i in infos})
    session.commit()
    return row


def _row_by_name(session: Session, name: str) -> ModelRow | None:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "models":
        raise InvalidArgument(f"base_model must be a full model name, got {name[:200]!r}")
    return session.get(ModelRow, (parts[1], parts[3]))


__all__ = ["register_local_model", "register_model_files"]
