"""deployment: create (firectl's flags, --wait), get, list, update, scale, delete [--hard], undelete."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from fireplace.cli.grammar import verb
from fireplace.cli.output import Column, Kind, ident, note, short_id, state, when
from fireplace.cli.resources.common import Wait, WaitTimeout, completer, seconds
from fireplace.cli.resources.crud import get_command, in_account, list_command, option, ref
from fireplace.cli.session import current
from fireplace.cli.waiting import wait_for

DEPLOYMENT = Kind("Deployment", (ident(), Column("BASE MODEL", "baseModel", short_id), state(),
                                 Column("REPLICAS", "replicaCount"), Column("MIN", "minReplicaCount"),
                                 Column("MAX", "maxReplicaCount"), Column("ADDONS", "enableAddons"), when()))
DeploymentRef = Annotated[str, typer.Argument(help="Deployment ID or full name.",
                                               autocompletion=completer("deployments", "deployments"))]
MinReplicas = Annotated[Optional[int], typer.Option("--min-replica-count", min=0)]
MaxReplicas = Annotated[Optional[int], typer.Option("--max-replica-count", min=0)]
Addons = Annotated[Optional[bool], typer.Option("--enable-addons/--disable-addons", help="Allow LoRA addons.",
                                                 show_default=False)]
DisplayName = Annotated[Optional[str], typer.Option("--display-name")]
Description = Annotated[Optional[str], typer.Option("--description")]
DONE, FAILED = {"READY"}, {"FAILED", "DELETED", "DELETING"}


def _fields(display_name, description, min_replicas, max_replicas, addons, max_context_length=None) -> dict:
    """The flags given, as deployment fields (the server refuses Fireworks fields it does not honour,
    such as autoscalingPolicy, so no flag sends them)."""
    return {k: v for k, v in {
        "displayName": display_name, "description": description, "minReplicaCount": min_replicas,
        "maxReplicaCount": max_replicas, "enableAddons": addons, "maxContextLength": max_context_length,
    }.items() if v is not None}


def _describe(d: dict) -> str:
    stats = d.get("replicaStats") or {}
    return (f"{short_id(d.get('name'))}: {d.get('state')}  replicas {d.get('replicaCount', 0)}/"
            f"{d.get('desiredReplicaCount', 0)} (ready {stats.get('readyReplicaCount', 0)})")


@verb("create", "deployment",
      "fireplace create deployment accounts/fireplace/models/smollm2-135m-instruct --deployment-id chat --wait\n"
      "fireplace create deployment my-base --enable-addons --min-replica-count 0 --max-replica-count 2")
def create_deployment(
    model: Annotated[str, typer.Argument(help="The base model to serve (ID or full name).")],
    deployment_id: Annotated[Optional[str], typer.Option("--deployment-id", help="Default: generated.")] = None,
    min_replica_count: MinReplicas = None, max_replica_count: MaxReplicas = None, enable_addons: Addons = None,
    max_context_length: Annotated[Optional[int], typer.Option("--max-context-length", min=1)] = None,
    display_name: DisplayName = None, description: Description = None,
    validate_only: Annotated[bool, typer.Option("--validate-only", help="Check, create nothing.")] = False,
    wait: Wait = False, wait_timeout: WaitTimeout = "30m",
) -> None:
    """Create a deployment of a base model; with --wait, return once it is READY."""
    timeout = seconds(wait_timeout, "--wait-timeout")
    fields = _fields(display_name, description, min_replica_count, max_replica_count, enable_addons,
                     max_context_length)
    s = current()
    deployment = s.client.deployments.create(model, fields, deployment_id=deployment_id, validate_only=validate_only)
    if wait and not validate_only:
        deployment = wait_for(lambda: s.client.deployments.get(deployment["name"]), done=DONE, failed=FAILED,
                              timeout=timeout, describe=_describe, what=deployment["name"])
    s.printer.one(deployment, DEPLOYMENT)


get_command("deployment", ref("deployment", DeploymentRef), lambda c: c.deployments, DEPLOYMENT,
            "Show a deployment.", "fireplace get deployment chat")
list_command("deployment", in_account("deployments"), "deployments", DEPLOYMENT, "List the account's deployments.",
             "fireplace list deployments\nfireplace list deployments --show-deleted",
             options=[option("show_deleted", Annotated[bool, typer.Option("--show-deleted", help="Include DELETED ones.")],
                             False)],
             query=lambda o: {"showDeleted": o["show_deleted"] or None})


@verb("update", "deployment", "fireplace update deployment chat --max-replica-count 4 --display-name Chat")
def update_deployment(
    deployment: DeploymentRef, min_replica_count: MinReplicas = None, max_replica_count: MaxReplicas = None,
    enable_addons: Addons = None, display_name: DisplayName = None, description: Description = None,
) -> None:
    """Change a deployment's replica bounds, addons or names."""
    fields = _fields(display_name, description, min_replica_count, max_replica_count, enable_addons)
    if not fields:
        raise typer.BadParameter("nothing to change: give at least one flag (see --help)")
    s = current()
    s.printer.one(s.client.deployments.update(deployment, fields), DEPLOYMENT)


@verb("scale", "deployment", "fireplace scale deployment chat --replica-count 2")
def scale_deployment(deployment: DeploymentRef,
                     replica_count: Annotated[int, typer.Option("--replica-count", min=0, help="Desired replicas.")]
                     ) -> None:
    """Set the desired replica count (within the deployment's min and max)."""
    s = current()
    s.printer.one(s.client.deployments.scale(deployment, replica_count), DEPLOYMENT)


@verb("delete", "deployment", "fireplace delete deployment chat\nfireplace delete deployment chat --hard --ignore-checks")
def delete_deployment(deployment: DeploymentRef,
                      hard: Annotated[bool, typer.Option("--hard", help="Remove now (default: DELETED, "
                                                         "undeletable for 30 days).")] = False,
                      ignore_checks: Annotated[bool, typer.Option("--ignore-checks", help="Unload its deployed "
                                                                  "models instead of refusing.")] = False) -> None:
    """Delete a deployment (soft by default)."""
    s = current()
    s.client.deployments.delete(deployment, hard=hard, ignore_checks=ignore_checks)
    note(f"deleted {s.client.deployments.name(deployment)}" + (" (hard)" if hard else " (undelete to restore)"))


@verb("undelete", "deployment", "fireplace undelete deployment chat")
def undelete_deployment(deployment: DeploymentRef) -> None:
    """Restore a soft-deleted deployment."""
    s = current()
    s.printer.one(s.client.deployments.undelete(deployment), DEPLOYMENT)
