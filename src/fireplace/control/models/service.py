"""Model lifecycle: create (UPLOADING), get, list, update, delete; access and references.

Other packages resolve model references with `resolve_model` (full name or ID, visible to
the caller: own account, the public catalog, or a model marked public).
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fireplace.api.auth import Action, Principal, authorize
from fireplace.api.filtering import FieldMap, name_field, as_bool, as_str, as_time
from fireplace.api.listing import ListParams, paginate
from fireplace.api.wire import rfc3339, status
from fireplace.control.common import check_etag, fetch, path_id, touch, update_mask_fields
from fireplace.control.models.files import MAX_LORA_RANK, MIN_LORA_RANK
from fireplace.control.models.schemas import (DeployedModelRef, Model, ModelCreate, ModelUpdate,
                                              PeftDetails)
from fireplace.control.models.tables import (KIND_ADDON, KIND_BASE, STATE_READY, STATE_UPLOADING,
                                             ModelFileRow, ModelRow)
from fireplace.db.engine import add_unique
from fireplace.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, not_found
from fireplace.ids import parse_name, validate_id
from fireplace.storage import BlobStore, blob_key

log = logging.getLogger("fireplace.models")

SUPPORTED_KINDS = (KIND_BASE, KIND_ADDON)
# Wire fields kept in `spec` under their snake_case names; all are mutable by PATCH.
SPEC_FIELDS = ("description", "context_length", "training_context_length", "conversation_config",
               "supports_lora", "supports_tools", "supports_image_input", "use_hf_apply_chat_template",
               "hugging_face_url", "github_url")
MUTABLE_FIELDS = frozenset(SPEC_FIELDS) | {"display_name", "public"}
IMMUTABLE_FIELDS = frozenset({"name", "kind", "state", "status", "peft_details", "base_model_details",
                              "create_time", "update_time", "deployed_model_refs", "fine_tuning_job",
                              "imported_from", "etag"})
# Output-only details filled by :validateUpload, never taken from a client.
DERIVED_DETAILS = ("parameter_count", "checkpoint_format")


def model_name(account_id: str, model_id: str) -> str:
    return f"accounts/{account_id}/models/{model_id}"


def load_model(session: Session, caller: Principal, account_id: str, model_id: str, *,
               action: Action = Action.READ, for_update: bool = False, serialize: bool = False) -> ModelRow:
    """The model, or the one not-found error. Reads also reach models marked public."""
    try:
        return fetch(session, ModelRow, caller, account_id, model_id, kind="model", collection="models",
                     action=action, for_update=for_update, serialize=serialize)
    except NotFound:
        if action > Action.READ:
            raise
        row = session.get(ModelRow, (account_id, model_id))
        if row is None or not row.public:
            raise
        return row


def resolve_model(session: Session, caller: Principal, ref: str, *, account_id: str,
                  what: str = "model") -> ModelRow:
    """A model reference from a request body ('accounts/a/models/m', or 'm' in account_id)
    -> the row, if the caller may read it; else the one not-found error."""
    ref_account, ref_id = parse_name(ref, "models", account_id=account_id, what=what)
    return load_model(session, caller, ref_account, ref_id)


def parse_model_ref(account_id: str, model_ref: str) -> tuple[str, str]:
    """A path's model segment: an ID, or a full name of the path's account (the SDK
    percent-encodes its slashes); another account's full name answers like a missing model."""
    validate_id(account_id, "account id")
    return account_id, path_id(account_id, model_ref, "models", "model")


def require_publisher(caller: Principal, account_id: str) -> None:
    """Only an account admin (or a platform admin) may make a model public: a public model is
    readable, deployable and fine-tunable by every account (and then pins it: see delete)."""
    if not (caller.is_platform_admin or (caller.account_id == account_id and caller.can(Action.ADMIN))):
        raise PermissionDenied(f"role {caller.role!r} may not make models public; ask an account admin")


# ---- create ---------------------------------------------------------------------------------

def create_model(session: Session, caller: Principal, account_id: str, body: ModelCreate) -> ModelRow:
    validate_id(account_id, "account id")
    ref_account, model_id = parse_name(body.model_id, "models", account_id=account_id, what="modelId")
    if ref_account != account_id:
        raise InvalidArgument(f"modelId {body.model_id[:200]!r} names account {ref_account!r}, "
                              f"but the request is for account {account_id!r}")
    name = model_name(account_id, model_id)
    authorize(caller, account_id, Action.WRITE, kind="account", name=f"accounts/{account_id}")
    _require_account(session, account_id)
    spec = body.model
    kind = spec.kind or "KIND_UNSPECIFIED"
    if kind == "KIND_UNSPECIFIED":
        kind = KIND_ADDON  # Fireworks' default kind
    if kind not in SUPPORTED_KINDS:
        raise InvalidArgument(f"model.kind {kind[:64]!r} is not supported by Fireplace; "
                              f"use {' or '.join(SUPPORTED_KINDS)}")
    if spec.public:
        require_publisher(caller, account_id)
    row = ModelRow(account_id=account_id, model_id=model_id, kind=kind, state=STATE_UPLOADING,
                   display_name=spec.display_name or "", public=bool(spec.public),
                   created_by=caller.user_name, spec=_spec_fields(spec))
    if kind == KIND_ADDON:
        _set_peft(session, caller, row, spec.peft_details)
    else:
        _set_base_details(row, spec)
    from fireplace.control.fine_tuning.usage import require_unclaimed
    from fireplace.control.locks import serialize_account
    serialize_account(session, account_id)  # job create checks this name's absence under the same lock
    require_unclaimed(session, name)        # an unfinished job's outputModel
    add_unique(session, row, f"model {name!r}")
    session.commit()
    return row


def _require_account(session: Session, account_id: str) -> None:
    from fireplace.control.accounts.tables import AccountRow
    if session.get(AccountRow, account_id) is None:
        raise not_found("account", f"accounts/{account_id}")


def _spec_fields(fields: Any) -> dict:
    out = {}
    for key in SPEC_FIELDS:
        value = getattr(fields, key, None)
        if value is not None:
            out[key] = value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value
    return out


def _set_peft(session: Session, caller: Principal, row: ModelRow, peft: PeftDetails | None) -> None:
    if peft is None or not peft.base_model:
        raise InvalidArgument("model.peftDetails.baseModel is required for kind HF_PEFT_ADDON "
                              "(the default kind); for a full model set kind HF_BASE_MODEL")
    if peft.r is not None and not MIN_LORA_RANK <= peft.r <= MAX_LORA_RANK:
        raise InvalidArgument(f"model.peftDetails.r must be from {MIN_LORA_RANK} to {MAX_LORA_RANK}, got {peft.r}")
    if any(not t or len(t) > 256 for t in peft.target_modules):
        raise InvalidArgument("model.peftDetails.targetModules: names must be 1-256 characters")
    try:
        base = resolve_model(session, caller, peft.base_model, account_id=row.account_id,
                             what="peftDetails.baseModel")
    except NotFound:
        raise InvalidArgument(f"model.peftDetails.baseModel: model {peft.base_model[:300]!r} not found") from None
    if base.kind != KIND_BASE:
        raise FailedPrecondition(f"model.peftDetails.baseModel: {base.name!r} is a {base.kind}, not an HF_BASE_MODEL")
    if base.state != STATE_READY:
        raise FailedPrecondition(f"model.peftDetails.baseModel: {base.name!r} is {base.state}, not READY "
                                 "(finish its upload with :validateUpload first)")
    row.base_model = base.name
    row.spec = {**row.spec, "peft_details": {
        "r": peft.r, "target_modules": list(peft.target_modules),
        "merge_addon_model_name": peft.merge_addon_model_name,
        "base_model_type": (base.spec.get("base_model_details") or {}).get("model_type")}}
    if row.spec.get("supports_lora") is None:
        row.spec["supports_lora"] = True


def _set_base_details(row: ModelRow, spec) -> None:
    if spec.peft_details is not None:
        raise InvalidArgument("model.peftDetails must not be set for kind HF_BASE_MODEL")
    details = spec.base_model_details.model_dump(exclude_none=True) if spec.base_model_details else {}
    for key in DERIVED_DETAILS:
        details.pop(key, None)
    row.spec = {**row.spec, "base_model_details": details}


# ---- read -----------------------------------------------------------------------------------

def deployed_model_refs(session: Session, caller: Principal, name: str) -> list[DeployedModelRef]:
    """Where this model is loaded, as far as the caller may see (their own account's rows)."""
    from fireplace.control.deployed_models.tables import DeployedModelRow  # lazy: it imports models
    stmt = select(DeployedModelRow).where(DeployedModelRow.model == name)
    if not caller.is_platform_admin:
        stmt = stmt.where(DeployedModelRow.account_id == caller.account_id)
    rows = session.scalars(stmt.order_by(DeployedModelRow.account_id, DeployedModelRow.deployed_model_id)
                           .limit(200))
    return [DeployedModelRef(name=f"accounts/{r.account_id}/deployedModels/{r.deployed_model_id}",
                             deployment=r.deployment, state=r.state, default=bool(r.is_default),
                             public=bool(getattr(r, "public", False))) for r in rows]


def to_wire(row: ModelRow, refs: list[DeployedModelRef] | None = None, *, hide_base: bool = False) -> Model:
    """The model on the wire; hide_base: peftDetails.baseModel empty (see caller_view)."""
    spec = row.spec or {}
    fields = {key: spec[key] for key in SPEC_FIELDS if spec.get(key) is not None}
    peft = spec.get("peft_details")
    details = spec.get("base_model_details")
    return Model(
        name=row.name, display_name=row.display_name, kind=row.kind, state=row.state,
        status=spec.get("status") or status(), public=row.public,
        create_time=rfc3339(row.create_time), update_time=rfc3339(row.update_time),
        peft_details=PeftDetails(base_model="" if hide_base else row.base_model,
                                 **{k: v for k, v in peft.items() if v is not None})
        if row.kind == KIND_ADDON and peft is not None else None,
        base_model_details=details if row.kind != KIND_ADDON and details is not None else None,
        deployed_model_refs=refs, fine_tuning_job=spec.get("fine_tuning_job"),
        imported_from=spec.get("imported_from"), supports_serverless=spec.get("supports_serverless"),
        tunable=row.kind == KIND_BASE and row.state == STATE_READY or None, etag=str(row.etag), **fields)


def can_read_model(session: Session, caller: Principal, name: str) -> bool:
    """Whether `caller` may read the model of this full name (own account, the public catalog,
    or a model marked public)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "models":
        return False
    try:
        load_model(session, caller, parts[1], parts[3])
    except (NotFound, PermissionDenied, InvalidArgument):
        return False
    return True


def caller_view(session: Session, caller: Principal, row: ModelRow,
                refs: list[DeployedModelRef] | None = None) -> Model:
    """The model as `caller` may see it: an addon whose base the caller cannot read (a public
    addon trained on its owner's private base) names no base (peftDetails.baseModel ""), so
    neither the base's name nor, through it, its state leaks; loading or warm-starting from such
    an addon answers exactly like a missing model (deployments.service.resolve_addon_base)."""
    hide = row.kind == KIND_ADDON and bool(row.base_model) and not can_read_model(session, caller, row.base_model)
    return to_wire(row, refs, hide_base=hide)


def get_model(session: Session, caller: Principal, account_id: str, model_id: str) -> Model:
    row = load_model(session, caller, account_id, model_id)
    out = caller_view(session, caller, row, deployed_model_refs(session, caller, row.name))
    if row.public and (caller.account_id == row.account_id or caller.is_platform_admin):
        out.foreign_dependent_count = foreign_dependents(session, row)
    return out


LIST_FIELDS: FieldMap = {
    "name": name_field(ModelRow.model_id, "accounts/", ModelRow.account_id, "/models/", ModelRow.model_id),
    "model_id": (ModelRow.model_id, as_str),
    "display_name": (ModelRow.display_name, as_str),
    "kind": (ModelRow.kind, as_str),
    "state": (ModelRow.state, as_str),
    "public": (ModelRow.public, as_bool),
    "base_model": (ModelRow.base_model, as_str),
    "create_time": (ModelRow.create_time, as_time),
    "update_time": (ModelRow.update_time, as_time),
}


def list_models(session: Session, caller: Principal, account_id: str, params: ListParams):
    validate_id(account_id, "account id")
    authorize(caller, account_id, Action.READ, kind="account", name=f"accounts/{account_id}")
    stmt = select(ModelRow).where(ModelRow.account_id == account_id)
    rows, token, total = paginate(session, stmt, params, LIST_FIELDS, [ModelRow.model_id],
                                  scope=f"models:{account_id}")
    return [caller_view(session, caller, r) for r in rows], token, total


# ---- update ---------------------------------------------------------------------------------

def update_model(session: Session, caller: Principal, account_id: str, model_id: str,
                 body: ModelUpdate, update_mask: str | None = None, *, etag: str | None = None) -> Model:
    row = load_model(session, caller, account_id, model_id, action=Action.WRITE, serialize=True)
    check_etag(row, etag)
    _require_file_details_unchanged(row, body)
    mask = update_mask_fields(update_mask)
    if mask is None:
        fields = body.model_fields_set & MUTABLE_FIELDS
    else:
        fields = {f.split(".", 1)[0] for f in mask}
        for f in sorted(fields):
            if f in IMMUTABLE_FIELDS:
                raise InvalidArgument(f"updateMask: field {f!r} cannot be changed")
            if f not in MUTABLE_FIELDS:
                raise InvalidArgument(f"updateMask: unknown field {f!r}; mutable fields: "
                                      f"{', '.join(sorted(MUTABLE_FIELDS))}")
    spec = dict(row.spec or {})
    for f in fields:
        value = getattr(body, f, None)
        if f == "display_name":
            row.display_name = value or ""
        elif f == "public":
            if bool(value) and not row.public:
                require_publisher(caller, account_id)
            row.public = bool(value)
        elif value is None:
            spec.pop(f, None)
        else:
            spec[f] = value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value
    row.spec = spec
    touch(row)
    session.commit()
    return caller_view(session, caller, row, deployed_model_refs(session, caller, row.name))


def _require_file_details_unchanged(row: ModelRow, body: ModelUpdate) -> None:
    """kind, peftDetails and baseModelDetails describe the uploaded files: a PATCH may carry
    them (a client sending the model back) only as they are; a change is a 400 naming it."""
    from fireplace.api.wire import to_camel

    if body.kind not in (None, "", "KIND_UNSPECIFIED", row.kind):
        raise InvalidArgument(f"kind cannot be changed (the model is a {row.kind}); create a new model")
    current = to_wire(row)
    for field, given in (("peft_details", body.peft_details), ("base_model_details", body.base_model_details)):
        if given is None:
            continue
        now = getattr(current, field)
        now = now.model_dump() if now is not None else {}
        for key, value in given.model_dump(exclude_unset=True).items():
            if key == "base_model" and not value:
                continue    # sent back as a caller_view shows it (a base the caller cannot read)
            if key == "base_model" and "/" not in value:
                value = model_name(row.account_id, value)   # an ID names the model's own account
            if value != now.get(key):
                raise InvalidArgument(f"{to_camel(field)}.{to_camel(key)} cannot be changed: it describes the "
                                      "uploaded files; create a new model instead")


# ---- delete ---------------------------------------------------------------------------------

def model_users(session: Session, name: str) -> list[str]:
    """Names of deployments, deployed models and addons that rely on this model."""
    from fireplace.control.deployments.usage import model_usage  # lazy: deployments imports models
    users: list[str] = list(model_usage(session, name))
    addons = session.scalars(select(ModelRow).where(ModelRow.base_model == name).limit(100))
    users.extend(a.name for a in addons)
    return users


def delete_model(session: Session, blobs: BlobStore, caller: Principal, account_id: str, model_id: str, *,
                 etag: str | None = None, force: bool = False) -> None:
    """Refused while the owner's own deployments, deployed models or addons use the model
    (they are the owner's to remove). Users in other accounts (of a public model) are
    counted, never named; they block the delete unless an account admin passes force=true,
    which deletes the model anyway: their addons and deployments of it then fail to resolve
    it, exactly as if it had never been public."""
    row = load_model(session, caller, account_id, model_id, action=Action.WRITE, serialize=True)
    check_etag(row, etag)
    users = model_users(session, row.name)
    own_prefix = f"accounts/{account_id}/"
    own = [u for u in users if u.startswith(own_prefix)]
    foreign = len(users) - len(own)
    if own:
        listed = ", ".join(own[:10]) + (f" and {len(own) - 10} more" if len(own) > 10 else "")
        also = f" (and {foreign} resource(s) of other accounts)" if foreign else ""
        raise FailedPrecondition(f"model {row.name!r} is in use by {listed}{also}; delete or unload those first")
    if foreign and not force:
        raise FailedPrecondition(f"public model {row.name!r} is used by {foreign} resource(s) of other accounts; "
                                 "an account admin may delete it anyway with force=true")
    if foreign:
        require_publisher(caller, account_id)
    session.execute(delete(ModelFileRow).where(ModelFileRow.account_id == account_id,
                                               ModelFileRow.model_id == model_id))
    session.delete(row)
    session.commit()
    # The row is gone first: a crash here leaves orphan blobs, never a model without files.
    try:
        blobs.delete_prefix(blob_key("models", account_id, model_id))
        blobs.delete_prefix(blob_key("uploads", "models", account_id, model_id))
    except Exception:  # noqa: BLE001  (the delete is acknowledged; a sweeper can retry)
        log.exception("could not delete the files of %s", row.name)


def foreign_dependents(session: Session, row: ModelRow) -> int:
    """How many resources of other accounts use this (public) model: shown to its owner."""
    return sum(1 for u in model_users(session, row.name) if not u.startswith(f"accounts/{row.account_id}/"))
