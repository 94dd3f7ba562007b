"""Training: dataset validation, tokenization with loss masks, the LoRA SFT loop, checkpoints."""
