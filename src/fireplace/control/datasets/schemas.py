"""Wire shapes of datasets (fireworks/types/dataset*.py)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from fireplace.api.read_mask import body_read_mask
from fireplace.api.wire import FILE_MAP, BoundedJson, documented, Int64, Status, Wire
from fireplace.ids import ID_PATTERN, ref_pattern

Format = Literal["FORMAT_UNSPECIFIED", "CHAT", "COMPLETION", "RL"]
State = Literal["STATE_UNSPECIFIED", "UPLOADING", "READY"]
MAX_FILES = 1


class Lineage(Wire):
    """`splitted` / `transformed`: where a derived dataset came from."""
    source_dataset_id: str = ""
    original_format: Format | None = None


class EvaluationResult(Wire):
    evaluation_job_id: str = ""


class DatasetFields(Wire):
    """The writable fields (create body's `dataset`, and PATCH). Output-only fields a client
    echoes back (name, state, createTime, estimatedTokenCount ...) are ignored."""
    display_name: str | None = None
    format: Format | None = None
    example_count: Int64 | None = Field(None, json_schema_extra={"minimum": 0})  # the service says why
    user_uploaded: BoundedJson | None = None
    external_url: str | None = None
    source_job_name: str | None = None
    eval_protocol: BoundedJson | None = None
    evaluation_result: EvaluationResult | None = None
    splitted: Lineage | None = None
    transformed: Lineage | None = None


class DatasetUpdate(DatasetFields):
    """PATCH body: the writable fields, and the etag the change is based on (AIP-154)."""
    etag: str | None = Field(default=None, max_length=64)


class DatasetCreate(Wire):
    dataset_id: str = Field(max_length=300, json_schema_extra=documented(ID_PATTERN))
    dataset: DatasetFields = Field(default_factory=DatasetFields)
    source_dataset_id: str | None = Field(default=None, max_length=300,
                                          json_schema_extra=documented(ref_pattern("datasets")))


class Dataset(DatasetFields):
    name: str
    state: State
    status: Status = Field(default_factory=Status)
    create_time: str | None = None
    update_time: str | None = None
    created_by: str | None = None
    estimated_token_count: Int64 | None = None
    average_turn_count: float | None = None
    etag: str | None = None


class ListDatasetsResponse(Wire):
    datasets: list[Dataset]
    next_page_token: str = ""
    total_size: int = 0


class UploadEndpointRequest(Wire):
    filename_to_size: dict[str, Int64] = Field(min_length=1, max_length=1, json_schema_extra=FILE_MAP)   # the dataset's one JSONL
    read_mask: str | None = body_read_mask()


class SignedUrls(Wire):
    filename_to_signed_urls: dict[str, str]


class UploadResponse(Wire):
    """DatasetUploadResponse: OpenAI-file-like, with snake_case keys as the SDK reads them;
    the updated dataset rides along."""
    id: str
    bytes: int
    created_at: int = Field(serialization_alias="created_at")
    filename: str
    object: str = "file"
    purpose: str = "fine-tune"
    dataset: Dataset
