"""Wire shapes of the Model resource (fireworks.types.Model and the request bodies)."""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from fireplace.api.read_mask import body_read_mask
from fireplace.api.wire import FILE_MAP, documented, Int64, Status, Wire, refuse_unhonoured
from fireplace.errors import InvalidArgument
from fireplace.ids import ID_PATTERN

# Fields of Fireworks' model create/update bodies that Fireplace does not honour: refused by name.
UNHONOURED = {
    "defaultDraftModel": "no speculative decoding", "defaultDraftTokenCount": "no speculative decoding",
    "deprecationDate": "models are not deprecated on a schedule; delete them",
    "snapshotType": "no model snapshots",
    "teftDetails": "no TEFT addons (LoRA addons are HF_PEFT_ADDON with peftDetails)",
}
UNHONOURED_CREATE = {"cluster": "one cluster"}


class ConversationConfig(Wire):
    style: str = Field(default="", max_length=64)
    system: str | None = None
    template: str | None = Field(default=None, max_length=65536)   # Jinja, as tokenizers' chat_template

    @field_validator("template")
    @classmethod
    def _template_compiles(cls, value: str | None) -> str | None:
        """A syntax error is refused here, naming its line, rather than failing every chat
        request of every deployment of the model later."""
        if value:
            from jinja2 import TemplateSyntaxError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
            try:
                ImmutableSandboxedEnvironment().parse(value)
            except TemplateSyntaxError as exc:
                raise InvalidArgument(f"conversationConfig.template: line {exc.lineno}: {exc.message}",
                                      param="conversationConfig.template") from None
        return value


class PeftDetails(Wire):
    base_model: str = ""                       # full name (an ID means the model's own account)
    r: int | None = None                       # 4..64; filled from adapter_config.json when absent
    target_modules: list[str] = Field(default_factory=list, max_length=128)
    base_model_type: str | None = None         # output: config.json model_type of the base
    merge_addon_model_name: str | None = None


class BaseModelDetails(Wire):
    checkpoint_format: str | None = None       # output: HUGGINGFACE once validated
    parameter_count: Int64 | None = None       # output: from the safetensors headers
    model_type: str | None = None              # output: config.json model_type
    world_size: int | None = None
    default_precision: str | None = None
    moe: bool | None = None
    tunable: bool | None = None
    supports_fireattention: bool | None = None
    supports_mtp: bool | None = None


class DeployedModelRef(Wire):
    name: str
    deployment: str = ""
    state: str = ""
    default: bool = False
    public: bool = False


class ModelFields(Wire):
    """Fields a client may set (create) or change (update)."""
    display_name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=1000)
    context_length: int | None = Field(default=None, ge=0, le=1 << 30)
    training_context_length: int | None = Field(default=None, ge=0, le=1 << 30)
    conversation_config: ConversationConfig | None = None
    supports_lora: bool | None = None
    supports_tools: bool | None = None
    supports_image_input: bool | None = None
    use_hf_apply_chat_template: bool | None = None
    public: bool | None = None
    hugging_face_url: str | None = Field(default=None, max_length=2048)
    github_url: str | None = Field(default=None, max_length=2048)


class ModelIn(ModelFields):
    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data):
        return refuse_unhonoured(data, UNHONOURED, "model")

    kind: str | None = None
    peft_details: PeftDetails | None = None
    base_model_details: BaseModelDetails | None = None


class ModelCreate(Wire):
    @model_validator(mode="before")
    @classmethod
    def _refuse_unhonoured(cls, data):
        return refuse_unhonoured(data, UNHONOURED_CREATE, "model")

    model_id: str = Field(max_length=300, json_schema_extra=documented(ID_PATTERN))
    model: ModelIn = Field(default_factory=ModelIn)


class ModelUpdate(ModelIn):
    """PATCH body: mutable fields are merged; kind, peftDetails and baseModelDetails describe
    the uploaded files and may only be sent unchanged; output-only fields are ignored.
    `etag`: the version the change is based on (a stale one is 409 ABORTED)."""
    etag: str | None = Field(default=None, max_length=64)


class Model(ModelFields):
    name: str
    kind: str
    state: str
    status: Status
    create_time: str
    update_time: str
    peft_details: PeftDetails | None = None
    base_model_details: BaseModelDetails | None = None
    deployed_model_refs: list[DeployedModelRef] | None = None
    fine_tuning_job: str | None = None
    imported_from: str | None = None
    supports_serverless: bool | None = None
    tunable: bool | None = None
    etag: str | None = None
    # Fireplace extension, shown to a public model's owner: resources of other accounts
    # (deployments, deployed models, addons) that use it; they block a delete without force.
    foreign_dependent_count: int | None = None


class ModelList(Wire):
    models: list[Model]
    next_page_token: str = ""
    total_size: int = 0


class UploadEndpointRequest(Wire):
    filename_to_size: dict[str, Int64] = Field(max_length=512, json_schema_extra=FILE_MAP)
    enable_resumable_upload: bool | None = None   # only false: each file is one PUT (a failed one may be retried)
    read_mask: str | None = body_read_mask()

    @field_validator("enable_resumable_upload")
    @classmethod
    def _single_put(cls, value):
        if value:
            from fireplace.errors import InvalidArgument
            raise InvalidArgument("enableResumableUpload is not supported by Fireplace: each file is uploaded "
                                  "with one PUT to its signed URL (a failed PUT may be retried); omit it")
        return value


class SignedUrls(Wire):
    filename_to_signed_urls: dict[str, str] = Field(default_factory=dict)


class UploadUrls(SignedUrls):
    """:getUploadEndpoint's answer. `filenameToSha256` (Fireplace extension): the named files
    whose bytes the server already holds complete at the declared size, with their SHA-256 (hex),
    so an interrupted upload can skip what already arrived intact (the CLI's resumable upload)."""
    filename_to_sha256: dict[str, str] = Field(default_factory=dict)


class ValidateUploadResponse(Wire):
    warnings: list[str] = Field(default_factory=list)


class PrepareRequest(Wire):
    precision: str | None = None
    read_mask: str | None = body_read_mask()
