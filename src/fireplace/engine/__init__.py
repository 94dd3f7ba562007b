"""The inference engine: a library with no web code.

Plain-Python core (sequence, scheduler, block manager) decides what runs each step;
the model runner turns that into tensors and runs our own Llama-family models with
many LoRA addons in one batch.
"""
