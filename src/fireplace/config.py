"""Settings, from the environment (FIREPLACE_*) and CLI flags. Unknown keyword arguments are
refused, and so are unknown FIREPLACE_LIMIT_* and FIREPLACE_SERVING_* variables (those two
prefixes belong to Limits and ServingSettings alone, so a typo there is an error at start that
names the variable, not a silently ignored limit).

Data directory layout (FIREPLACE_HOME, default ~/.fireplace):
    fireplace.db      SQLite metadata database (when FIREPLACE_DATABASE_URL is unset)
    blobs/            blob store root (when FIREPLACE_BLOB_URL is unset)
    credentials       the first admin's API key, mode 0600
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _refuse_unknown_variables(settings: BaseSettings) -> None:
    """Raise ValueError for environment variables under the class's own prefix that name no
    field (matched case-insensitively, as pydantic-settings reads them)."""
    prefix = settings.model_config["env_prefix"]
    known = {name.upper() for name in type(settings).model_fields}
    unknown = sorted(key for key in os.environ
                     if key.upper().startswith(prefix) and key.upper()[len(prefix):] not in known)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key.upper()[len(prefix):], sorted(known), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ValueError(f"unknown setting {key}{hint}; the {prefix}* settings are "
                         f"{', '.join(prefix + name for name in sorted(known))}")


class Limits(BaseSettings):
    """Explicit bounds on what one request may ask for (documented in the README)."""
    model_config = SettingsConfigDict(env_prefix="FIREPLACE_LIMIT_", extra="forbid")

    max_body_bytes: int = 1 << 20             # JSON request bodies
    max_page_size: int = 200
    default_page_size: int = 50
    max_filter_chars: int = 1024              # may lower, not raise, the documented 1,024
    max_dataset_bytes: int = 150 << 20        # one dataset upload (Fireworks: 150 MB)
    max_model_file_bytes: int = 20 << 30      # one model file upload
    max_dataset_errors: int = 100             # errors listed for a bad JSONL upload
    min_dataset_examples: int = 3
    max_signups_per_hour: int = 10            # open sign-up (--allow-signup), per client address
    purge_interval_s: float = 60.0            # background purge of deployments past purgeTime

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> Limits:
        _refuse_unknown_variables(self)
        return self


class ServingSettings(BaseSettings):
    """The data plane in `fireplace serve`: controller, local executor, replicas."""
    model_config = SettingsConfigDict(env_prefix="FIREPLACE_SERVING_", extra="forbid")

    local_replica_slots: int | None = None    # model replicas at once; default: one per GPU, else 2
    local_embedding_slots: int = 1            # embedding replicas (small) have their own slots
    local_trainer_slots: int = 1              # fine-tuning workers at once
    replica_host: str = "127.0.0.1"           # where replicas listen (internal API)
    replica_kv_cache_mb: int = 256            # KV cache per replica (CPU)
    replica_threads: int | None = None        # torch threads per replica (CPU); default: all cores
    replica_max_loras: int = 8                # LoRA slots per replica
    replica_start_timeout_s: float = 600.0    # load + warm-up; longer = failed start
    max_replica_failures: int = 3             # failed starts in a row before the deployment is FAILED
    reconcile_interval_s: float = 1.0         # controller tick
    lease_ttl_s: float = 15.0                 # another server takes over after this long without renewal

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> ServingSettings:
        _refuse_unknown_variables(self)
        return self

    def replica_slots(self) -> int:
        if self.local_replica_slots is not None:
            return self.local_replica_slots
        try:
            import torch
            if torch.cuda.is_available():
                return torch.cuda.device_count()
        except Exception:
            pass
        return 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FIREPLACE_", extra="forbid")

    home: Path = Field(default_factory=lambda: Path.home() / ".fireplace")
    database_url: str | None = None           # default: sqlite:///<home>/fireplace.db
    blob_url: str | None = None               # default: <home>/blobs ; s3://bucket/prefix accepted
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None             # base URL put in upload/download links
    api_key: str | None = None                # the first admin key (else generated)
    admin_email: str = "admin@localhost"
    allow_signup: bool = False
    log_level: str = "info"
    workers_enabled: bool = True              # controller / job runners in this process
    import_catalog: bool = True               # register the bundled SmolLM2 in the public catalog
    limits: Limits = Field(default_factory=Limits)
    serving: ServingSettings = Field(default_factory=ServingSettings)

    @field_validator("home")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(v).expanduser()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'fireplace.db'}"

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or str(self.home / "blobs")

    @property
    def credentials_path(self) -> Path:
        return self.home / "credentials"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class SettingsError(ValueError):
    """An invalid or unknown setting in the environment or the flags (the message says which)."""


def load_settings(*, local_replica_slots: int | None = None, **overrides) -> Settings:
    """Settings from the environment and a command's flags, for `fireplace serve` / `controller`:
    raises SettingsError with the first problem on one line (the commands print it and exit 2)."""
    from pydantic import ValidationError

    try:
        if local_replica_slots is not None:
            overrides["serving"] = ServingSettings(local_replica_slots=local_replica_slots)
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SettingsError(f"{where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}") from None
