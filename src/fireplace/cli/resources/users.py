"""user: create, get, list, update (role, display name), delete (= disable: users are kept, since
resources name them as creators; every key revoked) and undelete (enable)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from fireplace.cli.grammar import verb
from fireplace.cli.output import Column, Kind, ident, note, state, when
from fireplace.cli.resources.crud import get_command, in_account, list_command, ref
from fireplace.cli.session import current

USER = Kind("User", (ident(), Column("EMAIL", "email"), Column("ROLE", "role"), state(), when()))
UserRef = Annotated[str, typer.Argument(help="User ID or full name.")]
Role = Annotated[Optional[str], typer.Option("--role", help="admin | user | contributor | inference-user")]


@verb("create", "user", "fireplace create user alice --role contributor --email alice@example.com")
def create_user(
    user_id: Annotated[Optional[str], typer.Argument(help="User ID (default: generated).")] = None,
    role: Role = None,
    email: Annotated[Optional[str], typer.Option("--email")] = None,
    display_name: Annotated[Optional[str], typer.Option("--display-name")] = None,
    service_account: Annotated[bool, typer.Option("--service-account", help="A robot user (no email).")] = False,
) -> None:
    """Create a user in the account (admin)."""
    if not role:
        raise typer.BadParameter("--role is required (admin | user | contributor | inference-user)")
    s = current()
    s.printer.one(s.client.users.create(user_id, role=role, email=email, display_name=display_name,
                                        service_account=service_account or None), USER)


get_command("user", ref("user", UserRef), lambda c: c.users, USER, "Show a user.", "fireplace get user alice")
list_command("user", in_account("users"), "users", USER, "List the account's users.",
             "fireplace list users\nfireplace list users --filter 'role=\"admin\"' -q")


@verb("update", "user", "fireplace update user alice --role admin")
def update_user(user: UserRef, role: Role = None,
                display_name: Annotated[Optional[str], typer.Option("--display-name")] = None) -> None:
    """Change a user's role (admin) or display name."""
    fields = {k: v for k, v in {"role": role, "displayName": display_name}.items() if v is not None}
    if not fields:
        raise typer.BadParameter("nothing to change: give --role and/or --display-name")
    s = current()
    s.printer.one(s.client.users.update(user, fields), USER)


@verb("delete", "user", "fireplace delete user alice")
def delete_user(user: UserRef) -> None:
    """Disable a user (admin): every key of theirs is revoked at once. Users are never removed
    (resources name them as creators); `undelete user` enables them again, without their old keys."""
    s = current()
    s.printer.one(s.client.users.disable(user), USER)
    note(f"disabled {s.client.users.name(user)} and revoked its API keys (undelete user to enable it again)")


@verb("undelete", "user", "fireplace undelete user alice")
def undelete_user(user: UserRef) -> None:
    """Enable a disabled user (admin); revoked keys stay revoked: create a new one."""
    s = current()
    s.printer.one(s.client.users.enable(user), USER)
