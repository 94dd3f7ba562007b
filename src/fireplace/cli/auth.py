"""login (check a key, store base URL + key + account in the login file, mode 0600), logout,
whoami (account, user, role of the key in use)."""
from __future__ import annotations

import os

import typer

from fireplace.cli.grammar import top
from fireplace.cli.output import Column, Kind, note
from fireplace.cli.profile import login_file, resolve, write_env_file
from fireplace.cli.session import Session, current
from fireplace.client import Fireplace
from fireplace.client.identity import who_am_i
from fireplace.errors import Unauthenticated

IDENTITY = Kind("You", (Column("ACCOUNT", "account"), Column("USER", "user"), Column("ROLE", "role"),
                        Column("EMAIL", "email"), Column("SERVER", "baseUrl")))


def _identity(s: Session) -> dict:
    if not s.profile.api_key:
        raise Unauthenticated("no API key: pass --api-key, set FIREPLACE_API_KEY or run `fireplace login`")
    me = who_am_i(s.client, s.profile.api_key)
    return {**me, "baseUrl": s.client.base_url}


@top("whoami", "fireplace whoami\nfireplace whoami -o json")
def whoami() -> None:
    """Show who you are: account, user and role of the API key in use, and the server."""
    s = current()
    me = _identity(s)
    if s.options.quiet:
        typer.echo(me["user"] or me["account"])
        return
    s.printer.one(me, IDENTITY)
    if not s.structured and s.profile.source:
        note(f"(defaults from {s.profile.source})")


@top("login", "fireplace login --base-url https://fireplace.example.com --api-key fw_...\n"
              "fireplace login   # prompts for the key")
def login() -> None:
    """Check an API key against the server and store it (with the base URL and account) in the
    login file (FIREPLACE_CONFIG, default ~/.config/fireplace/credentials, mode 0600)."""
    given = current().options
    key = given.api_key or os.environ.get("FIREPLACE_API_KEY") or typer.prompt("API key", hide_input=True).strip()
    # Only what was given now counts: stored values may belong to another server.
    base_url = (given.base_url or os.environ.get("FIREPLACE_BASE_URL") or resolve().base_url).rstrip("/")
    account = given.account or os.environ.get("FIREPLACE_ACCOUNT") or None
    with Fireplace(base_url, key, account) as client:
        me = who_am_i(client, key)
    path = login_file()
    write_env_file(path, {"FIREPLACE_BASE_URL": base_url, "FIREPLACE_API_KEY": key,
                          "FIREPLACE_ACCOUNT_ID": me["account"].removeprefix("accounts/")})
    who = me["user"] or "(user unknown)"
    note(f"Logged in to {base_url} as {who}" + (f" ({me['role']})" if me["role"] else "")
         + f" in {me['account']}; saved to {path}")


@top("logout", "fireplace logout")
def logout() -> None:
    """Forget the stored login (the login file is removed; the server's credentials file stays)."""
    path = login_file()
    if path.exists():
        path.unlink()
        note(f"removed {path}")
    else:
        note(f"not logged in ({path} does not exist)")
