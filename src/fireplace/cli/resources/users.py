"""user: create, get, list, update (role, display name)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from fireplace.cli.grammar import verb
from fireplace.cli.output import Column, Kind, ident, state, when
from fireplace.cli.resources.common import AllPages, Filter, OrderBy, PageSize, PageToken, show_list
from fireplace.cli.session import current

USER = Kind("User", (ident(), Column("EMAIL", "email"), Column("ROLE", "role"), state(), when()))
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


@verb("get", "user", "fireplace get user alice")
def get_user(user: Annotated[str, typer.Argument(help="User ID or full name.")]) -> None:
    """Show a user."""
    s = current()
    s.printer.one(s.client.users.get(user), USER)


@verb("list", "user", "fireplace list users\nfireplace list users --filter 'role=\"admin\"' -q")
def list_users(filter: Filter = None, order_by: OrderBy = None, page_size: PageSize = None,
               page_token: PageToken = None, all_pages: AllPages = False) -> None:
    """List the account's users."""
    s = current()
    show_list(s.client.collection_path("users"), "users", USER, filter=filter, order_by=order_by,
              page_size=page_size, page_token=page_token, all_pages=all_pages)


@verb("update", "user", "fireplace update user alice --role admin")
def update_user(user: Annotated[str, typer.Argument(help="User ID or full name.")], role: Role = None,
                display_name: Annotated[Optional[str], typer.Option("--display-name")] = None) -> None:
    """Change a user's role (admin) or display name."""
    fields = {k: v for k, v in {"role": role, "displayName": display_name}.items() if v is not None}
    if not fields:
        raise typer.BadParameter("nothing to change: give --role and/or --display-name")
    s = current()
    s.printer.one(s.client.users.update(user, fields), USER)
