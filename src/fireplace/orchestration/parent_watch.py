"""Exit when the process that started us is gone (a child of `fireplace serve` must never
outlive it, even after kill -9: PR_SET_PDEATHSIG covers Linux, this covers the rest and the
case where the spawning thread, not the process, ended)."""
from __future__ import annotations

import os
import threading
import time


def watch_parent(interval_s: float = 1.0) -> None:
    parent = os.environ.get("FIREPLACE_PARENT_PID")
    if not parent:
        return
    parent_pid = int(parent)

    def run() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent_pid:
                os._exit(3)
    threading.Thread(target=run, name="fireplace-parent-watch", daemon=True).start()
