"""Orchestration: the controller (level-triggered reconcile loop) and the executors that run
replicas and training workers (local subprocesses; Ray in the scale-out issue)."""
