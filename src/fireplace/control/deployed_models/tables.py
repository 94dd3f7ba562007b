"""deployed_models: a model (usually a LoRA addon) loaded into a deployment ("load-lora").

At most one row per (account, model, deployment); among an account's rows for one model,
exactly one is the default (the target of `accounts/A/models/M` without `#deployment`).
"""
from __future__ import annotations

from sqlalchemy import Boolean, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import AccountScoped, Base

# States (Fireworks' DeployedModel.state). DEPLOYING until the controller of the data-plane
# issue sees the addon loaded on a replica.
DEPLOYING, DEPLOYED, UPDATING, UNDEPLOYING = "DEPLOYING", "DEPLOYED", "UPDATING", "UNDEPLOYING"


class DeployedModelRow(AccountScoped, Base):
    __tablename__ = "deployed_models"
    __table_args__ = (
        UniqueConstraint("account_id", "model", "deployment", name="uq_deployed_models_model_deployment"),
        Index("ix_deployed_models_model", "model"),
        Index("ix_deployed_models_deployment", "deployment"),
        # At most one default per (account, model), enforced by the database as well.
        Index("uq_deployed_models_default", "account_id", "model", unique=True,
              sqlite_where=text("is_default"), postgresql_where=text("is_default")),
    )

    deployed_model_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    model: Mapped[str] = mapped_column(String(300), nullable=False)        # full model name
    deployment: Mapped[str] = mapped_column(String(300), nullable=False)   # full deployment name
    state: Mapped[str] = mapped_column(String(32), default=DEPLOYING, nullable=False)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    is_addon: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)  # counts toward loaded-addons
    description: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
    public: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    status_code: Mapped[str] = mapped_column(String(32), default="OK", nullable=False)
    status_message: Mapped[str] = mapped_column(String(4096), default="", nullable=False)
