"""The state one command runs with: connection (see profile.py), output format, the client.

Connection and output options are accepted both before the verb (`fireplace -o json list
models`) and after it (`fireplace list models -o json`): `command()` adds them to every
command's signature, and the later one wins.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
from dataclasses import dataclass, fields, replace
from typing import Annotated, Any, Callable, Optional

import typer

from fireplace import errors
from fireplace.cli import exit_codes
from fireplace.cli.failures import error_text, report_error
from fireplace.cli.output import FORMATS, Printer, stderr
from fireplace.cli.profile import Profile, resolve
from fireplace.client import Fireplace

ROOT_KEY = "fireplace.root"
CTX_PARAM = "fireplace_click_context"   # the typer.Context injected into every command
_session: contextvars.ContextVar["Session"] = contextvars.ContextVar("fireplace_cli_session")


@dataclass(frozen=True)
class Options:
    base_url: Optional[str] = None
    api_key: Optional[str] = None
    account: Optional[str] = None
    output: Optional[str] = None
    quiet: bool = False

    def over(self, earlier: "Options") -> "Options":
        """These options where given, else the earlier ones."""
        return replace(earlier, **{f.name: getattr(self, f.name) for f in fields(self)
                                   if getattr(self, f.name) not in (None, False)})


def _check_format(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in FORMATS:
        raise typer.BadParameter(f"{value!r}: expected one of {', '.join(FORMATS)}")
    return value


PANEL = "Connection and output"
GLOBAL_PARAMS = [
    inspect.Parameter("base_url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--base-url", help="API server (FIREPLACE_BASE_URL; default "
                                    "http://localhost:8000).", rich_help_panel=PANEL, show_default=False)]),
    inspect.Parameter("api_key", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--api-key", help="API key (FIREPLACE_API_KEY; default: `fireplace login`'s "
                                    "file, else the server's data-dir credentials).", rich_help_panel=PANEL,
                                    show_default=False)]),
    inspect.Parameter("account", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--account", "-a", help="Account ID (FIREPLACE_ACCOUNT; default: the key's "
                                    "own).", rich_help_panel=PANEL, show_default=False)]),
    inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--output", "-o", help="table | json | yaml (json/yaml: the API's JSON).",
                                    callback=_check_format, rich_help_panel=PANEL, show_default=False)]),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only resource names, one per line.",
                           rich_help_panel=PANEL)]),
]
GLOBAL_NAMES = [p.name for p in GLOBAL_PARAMS]


class Session:
    def __init__(self, options: Options):
        self.options = options
        self._client: Fireplace | None = None

    @functools.cached_property
    def profile(self) -> Profile:
        o = self.options
        return resolve(o.base_url, o.api_key, o.account)

    @property
    def client(self) -> Fireplace:
        if self._client is None:
            p = self.profile
            self._client = Fireplace(p.base_url, p.api_key, p.account_id)
        return self._client

    @property
    def printer(self) -> Printer:
        return Printer(self.options.output or "table", self.options.quiet)

    @property
    def structured(self) -> bool:
        """Output for scripts (json/yaml/-q): no decorations on stdout."""
        return self.options.quiet or (self.options.output or "table") != "table"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def current() -> Session:
    """The session of the command now running."""
    return _session.get()


def set_root_options(ctx: typer.Context, options: Options) -> None:
    ctx.meta[ROOT_KEY] = options


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn plus the connection/output options, run with typed errors -> exit codes."""
    signature = inspect.signature(fn, eval_str=True)
    ctx_param = inspect.Parameter(CTX_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    params = [*signature.parameters.values(), *GLOBAL_PARAMS, ctx_param]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        ctx: typer.Context = kwargs.pop(CTX_PARAM)
        given = Options(**{name: kwargs.pop(name) for name in GLOBAL_NAMES})
        session = Session(given.over(ctx.meta.get(ROOT_KEY) or Options()))
        token = _session.set(session)
        try:
            return fn(**kwargs)
        except errors.FireplaceError as exc:
            report_error(exc)
            raise typer.Exit(exit_codes.exit_code_for(exc)) from None
        except exit_codes.WaitFailed as exc:
            stderr().print(error_text(str(exc)))
            raise typer.Exit(exit_codes.WAIT_FAILED) from None
        except KeyboardInterrupt:
            stderr().print("interrupted", markup=False)
            raise typer.Exit(exit_codes.INTERRUPTED) from None
        finally:
            _session.reset(token)
            session.close()

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
