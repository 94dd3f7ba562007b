"""datasets: an immutable set of training examples (one JSONL blob), UPLOADING -> READY.

Columns are what lists filter on and what other resources read (fine-tuning reads `state`,
`format` and `blob_key`; quotas sum `size_bytes`); the rest of the wire fields live in `spec`:
    spec = {"userUploaded": {}, "externalUrl": str, "sourceJobName": str, "evalProtocol": {},
            "evaluationResult": {}, "splitted": {}, "transformed": {},
            "filename": str,                 # the uploaded file's name (download name)
            "pendingUploads": {name: size},  # declared by :getUploadEndpoint
            "averageTurnCount": float, "sha256": str}
"""
from __future__ import annotations

from sqlalchemy import JSON, BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from fireplace.db.base import AccountScoped, Base

UPLOADING, READY = "UPLOADING", "READY"


class DatasetRow(AccountScoped, Base):
    __tablename__ = "datasets"

    dataset_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    state: Mapped[str] = mapped_column(String(32), default=UPLOADING, nullable=False)
    format: Mapped[str] = mapped_column(String(32), default="FORMAT_UNSPECIFIED", nullable=False)
    example_count: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    estimated_token_count: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    blob_key: Mapped[str] = mapped_column(String(1024), default="", nullable=False)
    spec: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)

    @property
    def name(self) -> str:
        return f"accounts/{self.account_id}/datasets/{self.dataset_id}"
