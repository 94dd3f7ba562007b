"""api-key: create (the secret is printed once), get, list, update (display name), delete (revoke). Keys belong to a user:
--user (default: the user of the key you are calling with)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from fireplace.cli.grammar import verb
from fireplace.cli.output import Column, Kind, note, when
from fireplace.cli.resources.crud import list_command, option, ref, rename_command
from fireplace.cli.session import Session, current
from fireplace.client.identity import who_am_i
from fireplace.errors import InvalidArgument

API_KEY = Kind("API key", (Column("KEY ID", "keyId"), Column("NAME", "displayName"), Column("PREFIX", "prefix"),
                           when(), Column("EXPIRES", "expireTime")))
UserOpt = Annotated[Optional[str], typer.Option("--user", help="User ID or full name (default: you).")]


def _user(s: Session, user: Optional[str]) -> str:
    if user:
        return user
    me = who_am_i(s.client, s.profile.api_key or "")
    if not me["user"]:
        raise InvalidArgument("could not tell which user this API key belongs to: pass --user")
    return me["user"]


@verb("create", "api-key", "fireplace create api-key --display-name ci\nfireplace create api-key --user alice -o json")
def create_api_key(
    user: UserOpt = None,
    display_name: Annotated[Optional[str], typer.Option("--display-name")] = None,
    expire_time: Annotated[Optional[str], typer.Option("--expire-time", help="RFC 3339, e.g. 2027-01-01T00:00:00Z.")] = None,
) -> None:
    """Create an API key; its secret is shown only now."""
    s = current()
    key = s.client.api_keys.create(_user(s, user), display_name=display_name, expire_time=expire_time)
    s.printer.one(key, API_KEY)
    if not s.structured:
        note("The key above is shown only once: store it now.")


list_command("api-key", lambda s, options: s.client.path("users", _user(s, options["user"]), "/apiKeys"), "apiKeys",
             API_KEY, "List a user's active API keys (never their secrets).",
             "fireplace list api-keys\nfireplace list api-keys --user alice", leading=[option("user", UserOpt)])


KeyRef = Annotated[str, typer.Argument(help="Key ID (see list api-keys) or full name.")]


def _owner(s: Session, key_id: str, user: Optional[str]) -> str:
    """The key's user: --user, else the one in a full key name, else the caller."""
    if key_id.startswith("accounts/") and "/apiKeys/" in key_id and not user:
        user = key_id.split("/apiKeys/")[0]
    return _user(s, user)


@verb("get", "api-key", "fireplace get api-key k0123456789abcdef\nfireplace get api-key k0123456789abcdef --user alice")
def get_api_key(key_id: KeyRef, user: UserOpt = None) -> None:
    """Show an active API key (never its secret)."""
    s = current()
    s.printer.one(s.client.api_keys.get(_owner(s, key_id, user), key_id), API_KEY)


rename_command("api-key", [ref("key_id", KeyRef), option("user", UserOpt)],
               lambda s, o: s.client.api_keys.update(_owner(s, o["key_id"], o["user"]), o["key_id"],
                                                     {"displayName": o["display_name"]}), API_KEY,
               "Rename an API key; its secret, owner and expiry never change.",
               "fireplace update api-key k0123456789abcdef --display-name ci-nightly")


@verb("delete", "api-key", "fireplace delete api-key k0123456789abcdef")
def delete_api_key(key_id: KeyRef, user: UserOpt = None) -> None:
    """Revoke an API key (immediately)."""
    s = current()
    s.client.api_keys.delete(_owner(s, key_id, user), key_id)
    note(f"revoked {key_id}")
