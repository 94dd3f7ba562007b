"""Bundled and imported models: turn what ships with the platform into safetensors directories."""
from fireplace.catalog.smollm2 import SMOLLM2_MODEL_ID, default_model_cache, ensure_smollm2, find_smollm2_gguf

__all__ = ["SMOLLM2_MODEL_ID", "default_model_cache", "ensure_smollm2", "find_smollm2_gguf"]
