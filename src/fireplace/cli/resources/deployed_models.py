"""load-lora / unload-lora, and the deployed-model resource behind them (get, list, update;
`create deployed-model` is load-lora, `delete deployed-model` unloads by ID)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from fireplace.cli.grammar import top, verb
from fireplace.cli.output import Column, Kind, ident, note, short_id, state, when
from fireplace.cli.resources.common import Wait, WaitTimeout, seconds
from fireplace.cli.resources.crud import delete_command, get_command, in_account, list_command, ref
from fireplace.cli.session import current
from fireplace.cli.waiting import wait_for
from fireplace.errors import not_found

DEPLOYED_MODEL = Kind("Deployed model", (ident(), Column("MODEL", "model", short_id),
                                         Column("DEPLOYMENT", "deployment", short_id), state(),
                                         Column("DEFAULT", "default"), Column("PUBLIC", "public"), when()))
Model = Annotated[str, typer.Argument(help="The model (usually a LoRA addon): ID or full name.")]
Deployment = Annotated[str, typer.Option("--deployment", "-d", help="Deployment ID or full name.")]
DeployedModelRef = Annotated[str, typer.Argument(help="Deployed model ID or full name.")]
DONE, FAILED = {"DEPLOYED"}, {"UNDEPLOYING"}


def _describe(dm: dict) -> str:
    return f"{short_id(dm.get('model'))} on {short_id(dm.get('deployment'))}: {dm.get('state')}"


@top("load-lora", "fireplace load-lora my-lora --deployment chat --wait\n"
                  "fireplace load-lora accounts/me/models/my-lora -d chat --public --wait --wait-timeout 10m")
def load_lora(
    model: Model, deployment: Deployment,
    public: Annotated[bool, typer.Option("--public", help="Others may call it through this deployment.")] = False,
    default: Annotated[Optional[bool], typer.Option("--default/--no-default", help="Make this the model's "
                                                    "default deployment.", show_default=False)] = None,
    display_name: Annotated[Optional[str], typer.Option("--display-name")] = None,
    wait: Wait = False, wait_timeout: WaitTimeout = "30m",
) -> None:
    """Load a model (LoRA addon) into a deployment; with --wait, return once it is DEPLOYED."""
    timeout = seconds(wait_timeout, "--wait-timeout")
    s = current()
    c = s.client
    loaded = c.deployed_models.load(c.models.name(model), c.deployments.name(deployment), public=public or None,
                                    default=default, display_name=display_name)
    if wait:
        loaded = wait_for(lambda: c.deployed_models.get(loaded["name"]), done=DONE, failed=FAILED, timeout=timeout,
                          describe=_describe, what=loaded["name"])
    s.printer.one(loaded, DEPLOYED_MODEL)


verb("create", "deployed-model", "fireplace create deployed-model my-lora --deployment chat --wait")(load_lora)


@top("unload-lora", "fireplace unload-lora my-lora --deployment chat")
def unload_lora(model: Model, deployment: Deployment) -> None:
    """Unload a model from a deployment."""
    s = current()
    c = s.client
    model_name, deployment_name = c.models.name(model), c.deployments.name(deployment)
    found = c.deployed_models.find(model_name, deployment_name)
    if found is None:
        raise not_found("deployed model", f"{model_name} on {deployment_name}")
    c.deployed_models.unload(found["name"])
    note(f"unloaded {model_name} from {deployment_name}")


get_command("deployed-model", ref("deployed_model", DeployedModelRef), lambda c: c.deployed_models, DEPLOYED_MODEL,
            "Show a deployed model.", "fireplace get deployed-model dm-0123abcd")
list_command("deployed-model", in_account("deployedModels"), "deployedModels", DEPLOYED_MODEL,
             "List the account's deployed models.",
             "fireplace list deployed-models\n"
             "fireplace list deployed-models --filter 'deployment=\"accounts/me/deployments/chat\"'")


@verb("update", "deployed-model", "fireplace update deployed-model dm-0123abcd --public --default")
def update_deployed_model(
    deployed_model: DeployedModelRef,
    public: Annotated[Optional[bool], typer.Option("--public/--private", show_default=False)] = None,
    default: Annotated[Optional[bool], typer.Option("--default/--no-default", show_default=False)] = None,
    display_name: Annotated[Optional[str], typer.Option("--display-name")] = None,
    description: Annotated[Optional[str], typer.Option("--description")] = None,
) -> None:
    """Change a deployed model's visibility, default flag or names."""
    fields = {k: v for k, v in {"public": public, "default": default, "displayName": display_name,
                                "description": description}.items() if v is not None}
    if not fields:
        raise typer.BadParameter("nothing to change: give --public, --default, --display-name or --description")
    s = current()
    s.printer.one(s.client.deployed_models.update(deployed_model, fields), DEPLOYED_MODEL)


delete_command("deployed-model", ref("deployed_model", DeployedModelRef), lambda c: c.deployed_models,
               "Unload a deployed model by its ID (see unload-lora to name model and deployment).",
               "fireplace delete deployed-model dm-0123abcd", call="unload", done="unloaded")
