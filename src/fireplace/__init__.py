"""Fireplace: a self-hosted LLM platform with the Fireworks resource model."""

__version__ = "0.1.0"
