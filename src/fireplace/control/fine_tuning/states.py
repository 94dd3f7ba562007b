"""The legal life of a fine-tuning job, as one table. Every state change goes through
`transition`; an illegal one is 400 FAILED_PRECONDITION naming both states.

    CREATING -> VALIDATING -> PENDING -> RUNNING -> WRITING_RESULTS -> COMPLETED | EARLY_STOPPED
                                 |          |  \\-> EARLY_STOPPED | FAILED | PAUSED | RE_QUEUEING
                                 |          \\-> CANCELLING -> CANCELLED
                                 \\-> CANCELLED
    FAILED | CANCELLED | PAUSED --resume--> PENDING (VALIDATING when validation never finished)

Terminal: COMPLETED, EARLY_STOPPED, EXPIRED (no exits); FAILED and CANCELLED only resume.
A job is deletable when no worker runs for it: CREATING, VALIDATING, PENDING, PAUSED or final.
"""
from __future__ import annotations

from fireplace.errors import FailedPrecondition

P = "JOB_STATE_"
CREATING, VALIDATING, PENDING, RUNNING = P + "CREATING", P + "VALIDATING", P + "PENDING", P + "RUNNING"
WRITING_RESULTS, COMPLETED, FAILED = P + "WRITING_RESULTS", P + "COMPLETED", P + "FAILED"
CANCELLING, CANCELLED, EARLY_STOPPED = P + "CANCELLING", P + "CANCELLED", P + "EARLY_STOPPED"
EXPIRED, PAUSED, RE_QUEUEING = P + "EXPIRED", P + "PAUSED", P + "RE_QUEUEING"

TRANSITIONS: dict[str, frozenset[str]] = {
    CREATING: frozenset({VALIDATING, PENDING, FAILED, CANCELLED}),
    VALIDATING: frozenset({PENDING, FAILED, CANCELLED}),
    PENDING: frozenset({RUNNING, FAILED, CANCELLED, EXPIRED}),
    RUNNING: frozenset({WRITING_RESULTS, FAILED, CANCELLING, EARLY_STOPPED, PAUSED, RE_QUEUEING}),
    RE_QUEUEING: frozenset({PENDING, FAILED, CANCELLING}),
    WRITING_RESULTS: frozenset({COMPLETED, EARLY_STOPPED, FAILED}),
    CANCELLING: frozenset({CANCELLED, FAILED}),
    PAUSED: frozenset({PENDING, CANCELLED}),
    FAILED: frozenset({PENDING, VALIDATING}),
    CANCELLED: frozenset({PENDING, VALIDATING}),
    COMPLETED: frozenset(),
    EARLY_STOPPED: frozenset(),
    EXPIRED: frozenset(),
}
STATES = frozenset(TRANSITIONS)
FINAL = frozenset({COMPLETED, EARLY_STOPPED, EXPIRED, FAILED, CANCELLED})  # nothing runs; completedTime set
# Unfinished and not paused: the job holds or waits for a worker.
ACTIVE = frozenset({CREATING, VALIDATING, PENDING, RUNNING, RE_QUEUEING, WRITING_RESULTS, CANCELLING})
# The job holds a training worker (from PENDING -> RUNNING until it finishes, a worker restart in
# WRITING_RESULTS included): what the concurrent-fine-tuning-jobs quota bounds. More jobs wait in PENDING.
HOLDING_WORKER = frozenset({RUNNING, WRITING_RESULTS, CANCELLING})
DELETABLE = FINAL | {CREATING, VALIDATING, PENDING, PAUSED}

# User verbs: the state each verb moves a job to, from each state it is legal in.
CANCEL = {CREATING: CANCELLED, VALIDATING: CANCELLED, PENDING: CANCELLED, PAUSED: CANCELLED,
          RUNNING: CANCELLING, RE_QUEUEING: CANCELLING}
RESUME = {FAILED: PENDING, CANCELLED: PENDING, PAUSED: PENDING}


def can_transition(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


def check_transition(current: str, new: str) -> None:
    if not can_transition(current, new):
        raise FailedPrecondition(f"a fine-tuning job in state {current} cannot move to {new}")


def verb_target(verb: dict[str, str], verb_name: str, current: str) -> str:
    """The state `verb_name` moves a job in `current` to, or 400 FAILED_PRECONDITION."""
    if current not in verb:
        allowed = ", ".join(sorted(verb))
        raise FailedPrecondition(f"cannot {verb_name} a fine-tuning job in state {current} (allowed from: {allowed})")
    target = verb[current]
    check_transition(current, target)
    return target


def check_deletable(current: str) -> None:
    if current not in DELETABLE:
        raise FailedPrecondition(f"cannot delete a fine-tuning job in state {current}: cancel it first "
                                 "and delete it once it is JOB_STATE_CANCELLED")


def transition(row, new: str, *, message: str = "", code: str | None = None) -> None:
    """Move a job row (anything with state/status_code/status_message/completed_time) to `new`;
    a row with an etag gets a new one (AIP-154: a verb based on the old state is then refused)."""
    from fireplace.db.base import utcnow

    check_transition(row.state, new)
    row.state = new
    row.completed_time = utcnow() if new in FINAL else None
    row.status_code = code or {FAILED: "UNKNOWN", CANCELLED: "CANCELLED"}.get(new, "OK")
    row.status_message = message
    if hasattr(row, "etag"):
        row.etag = (row.etag or 0) + 1
