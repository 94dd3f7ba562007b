"""account: create (platform admin, or anyone with open sign-up), get, list, update (display name),
delete (platform admin; an empty account only)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from fireplace.cli.grammar import verb
from fireplace.cli.output import Column, Kind, ident, state, when
from fireplace.cli.resources.crud import delete_command, get_command, list_command, ref, rename_command
from fireplace.cli.session import current

ACCOUNT = Kind("Account", (ident(), Column("EMAIL", "email"), Column("TYPE", "accountType"), state(), when()))


@verb("create", "account", "fireplace create account --email dev@example.com")
def create_account(
    email: Annotated[str, typer.Option("--email", help="The admin user's email; a DEVELOPER account's ID comes from it.")],
    display_name: Annotated[Optional[str], typer.Option("--display-name")] = None,
    account_type: Annotated[Optional[str], typer.Option("--type", help="DEVELOPER (default) or ENTERPRISE.")] = None,
    account_id: Annotated[Optional[str], typer.Option("--account-id", help="ENTERPRISE only: choose the ID.")] = None,
) -> None:
    """Create an account and its admin user (platform admin; anyone when sign-up is open)."""
    s = current()
    s.printer.one(s.client.accounts.create(email, display_name=display_name, account_type=account_type,
                                           account_id=account_id), ACCOUNT)


AccountArg = Annotated[Optional[str], typer.Argument(help="Default: the current account.")]
get_command("account", ref("account_id", AccountArg, None), lambda c: c.accounts, ACCOUNT,
            "Show an account (default: your own).", "fireplace get account\nfireplace get account my-account -o json")
list_command("account", lambda _s, _options: "/v1/accounts", "accounts", ACCOUNT,
             "List accounts: your own (a platform admin sees every account).", "fireplace list accounts")
rename_command("account", [ref("account_id", AccountArg, None)],
               lambda s, o: s.client.accounts.update(o["account_id"], {"displayName": o["display_name"]}), ACCOUNT,
               "Rename an account (its admins); nothing else of an account changes.",
               'fireplace update account --display-name "Research team"')
delete_command("account", ref("account_id", Annotated[str, typer.Argument(help="Account ID or full name.")]),
               lambda c: c.accounts, "Delete an empty account with its users and API keys (platform admin): "
               "refused while it holds models, datasets, deployments or jobs.", "fireplace delete account old-team")
