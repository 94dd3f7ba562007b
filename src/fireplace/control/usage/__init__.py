"""Metered inference usage per (account, model, UTC day): written by the gateway's meter,
read by `GET /v1/accounts/{a}/usage`."""
