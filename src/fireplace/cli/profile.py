"""Where the CLI connects, and as whom.

Each value is taken from the first source that has it:
    1. the command's flags (--base-url, --api-key, --account; before or after the verb)
    2. the environment: FIREPLACE_BASE_URL, FIREPLACE_API_KEY, FIREPLACE_ACCOUNT (or _ACCOUNT_ID)
    3. one profile file: the login file written by `fireplace login` (FIREPLACE_CONFIG, default
       ~/.config/fireplace/credentials) if it exists, else the `credentials` file that
       `fireplace serve` writes into its data directory (FIREPLACE_HOME, default ~/.fireplace)
    4. base URL http://localhost:8000; account: the key's own (asked from the server)

Both files are KEY=VALUE lines (FIREPLACE_BASE_URL, FIREPLACE_API_KEY, FIREPLACE_ACCOUNT_ID),
mode 0600, so `make run` followed by `fireplace list models` works with no set-up at all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fireplace.client import DEFAULT_BASE_URL

KEYS = ("FIREPLACE_BASE_URL", "FIREPLACE_API_KEY", "FIREPLACE_ACCOUNT_ID")


def login_file() -> Path:
    explicit = os.environ.get("FIREPLACE_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "fireplace" / "credentials"


def server_credentials_file() -> Path:
    return Path(os.environ.get("FIREPLACE_HOME") or Path.home() / ".fireplace").expanduser() / "credentials"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped; a missing file is empty."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """Written to a 0600 temporary file then renamed, so the key is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in values.items() if v))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Profile:
    base_url: str
    api_key: str | None
    account_id: str | None
    source: str          # which file the defaults came from ('' when none)


def profile_file() -> tuple[Path | None, dict[str, str]]:
    for path in (login_file(), server_credentials_file()):
        values = read_env_file(path)
        if values:
            return path, values
    return None, {}


def resolve(base_url: str | None = None, api_key: str | None = None, account: str | None = None) -> Profile:
    path, stored = profile_file()
    env = os.environ
    key = api_key or env.get("FIREPLACE_API_KEY") or stored.get("FIREPLACE_API_KEY") or None
    # the stored account belongs to the stored key: another key defaults to its own account
    stored_account = stored.get("FIREPLACE_ACCOUNT_ID") if key == stored.get("FIREPLACE_API_KEY") else None
    return Profile(
        base_url=(base_url or env.get("FIREPLACE_BASE_URL") or stored.get("FIREPLACE_BASE_URL")
                  or DEFAULT_BASE_URL).rstrip("/"),
        api_key=key,
        account_id=(account or env.get("FIREPLACE_ACCOUNT") or env.get("FIREPLACE_ACCOUNT_ID")
                    or stored_account or None),
        source=str(path) if path else "")
