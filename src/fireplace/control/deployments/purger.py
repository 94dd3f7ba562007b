"""The background purger (AIP-164): soft-deleted deployments past their purgeTime are removed
here, every `interval_s`, never inside a GET or list (reads do not write; a past-purgeTime
row already reads as missing).

    stop = start_purger(session_factory, interval_s=60)   # in the API server's lifespan
    stop()                                                 # at shutdown
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("fireplace.purger")


def purge_once(session_factory: sessionmaker[Session]) -> int:
    from fireplace.control.deployments.service import purge_expired
    with session_factory() as session:
        return purge_expired(session)


def start_purger(session_factory: sessionmaker[Session], interval_s: float = 60.0) -> Callable[[], None]:
    stopping = threading.Event()

    def loop() -> None:
        while not stopping.wait(interval_s):
            try:
                purged = purge_once(session_factory)
                if purged:
                    log.info("purged %d deployment(s) past their purgeTime", purged)
            except Exception:  # noqa: BLE001  (the DB may be briefly away: try again next round)
                log.exception("deployment purge failed")

    thread = threading.Thread(target=loop, name="fireplace-purger", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(timeout=5)
    return stop
