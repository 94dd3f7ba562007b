"""Headers of the internal replica API (shared by replica, controller and gateway)."""
SECRET_HEADER = "x-fireplace-replica-secret"   # the per-replica secret only the API servers know
ADAPTER_HEADER = "x-fireplace-adapter"         # full name of the addon to run; absent = base model
