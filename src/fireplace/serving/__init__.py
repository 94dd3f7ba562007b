"""Serving: the replica process around the engine (OpenAI protocol, SSE, adapters, stats)."""
