"""models: base models (HF_BASE_MODEL) and LoRA addons (HF_PEFT_ADDON), and their files.

ModelRow keeps the columns other packages filter or join on (kind, state, base_model, public);
everything else of the wire resource lives in `spec` (snake_case keys):
    description, context_length, conversation_config{style,system,template}, supports_lora,
    supports_tools, supports_image_input, hugging_face_url, github_url, training_context_length,
    use_hf_apply_chat_template, fine_tuning_job, imported_from,
    peft_details{r, target_modules[], merge_addon_model_name, base_model_type},
    base_model_details{checkpoint_format, parameter_count, model_type, world_size, ...},
    status{code, message}

ModelFileRow is one file of a model: declared by :getUploadEndpoint (declared_size), filled by
the signed PUT (size, sha256, staged_key). One row per file, so parallel PUTs of different files
of one model never contend on the same row. A PUT streams into a unique staging blob; a
successful :validateUpload moves the staged blobs to their final keys
blob_key("models", account, model, filename), where engines and downloads read them.
"""
from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKeyConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import AccountScoped, Base, Timestamps

KIND_BASE = "HF_BASE_MODEL"
KIND_ADDON = "HF_PEFT_ADDON"
KIND_EMBEDDING = "EMBEDDING_MODEL"   # catalog embedding models (served by /v1/embeddings)
STATE_UPLOADING = "UPLOADING"
STATE_READY = "READY"


class ModelRow(AccountScoped, Base):
    __tablename__ = "models"

    model_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default=KIND_ADDON, nullable=False)
    state: Mapped[str] = mapped_column(String(32), default=STATE_UPLOADING, nullable=False)
    # peftDetails.baseModel as a full name ('' unless an addon)
    base_model: Mapped[str] = mapped_column(String(300), default="", nullable=False, index=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    spec: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)

    @property
    def name(self) -> str:
        return f"accounts/{self.account_id}/models/{self.model_id}"


class ModelFileRow(Timestamps, Base):
    __tablename__ = "model_files"
    __table_args__ = (ForeignKeyConstraint(["account_id", "model_id"], ["models.account_id", "models.model_id"],
                                           ondelete="CASCADE"),)

    account_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255), primary_key=True)
    declared_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)      # None until uploaded
    sha256: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    # Where the last accepted PUT put the bytes (a unique key per PUT, so a late PUT can never
    # change bytes that :validateUpload already checked); '' once published at the final key.
    staged_key: Mapped[str] = mapped_column(String(600), default="", nullable=False)
    # The nonce of the one signed PUT URL that may still write this file ('' once used): each
    # :getUploadEndpoint issues a new one, so a URL uploads once and an older URL never again.
    upload_nonce: Mapped[str] = mapped_column(String(40), default="", nullable=False)
