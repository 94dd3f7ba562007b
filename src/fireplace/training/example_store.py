"""Encoded examples as one safetensors blob per split, written by validation and read by the
trainer (so both see exactly the same tokens, on every resume).

    tokens  int32 [total tokens]     every example's ids, concatenated
    mask    uint8 [total tokens]     1 where the token is a training target
    offsets int64 [examples + 1]     example i is tokens[offsets[i]:offsets[i+1]]
    lines   int32 [examples]         1-based dataset line of each example
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import load, save

from fireplace.storage import BlobStore, blob_key
from fireplace.training.encoding import EncodedExample

MAX_EXAMPLES_BYTES = 16 << 30


@dataclass
class ExampleSet:
    tokens: torch.Tensor
    mask: torch.Tensor
    offsets: torch.Tensor
    lines: torch.Tensor

    def __len__(self) -> int:
        return int(self.lines.numel())

    def lengths(self) -> list[int]:
        return (self.offsets[1:] - self.offsets[:-1]).tolist()

    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[lo:hi], self.mask[lo:hi]

    def num_trained_tokens(self) -> int:
        return int(self.mask.sum())

    @classmethod
    def from_examples(cls, examples: list[EncodedExample]) -> "ExampleSet":
        offsets = [0]
        for ex in examples:
            offsets.append(offsets[-1] + len(ex.input_ids))
        ids = [t for ex in examples for t in ex.input_ids]
        mask = [m for ex in examples for m in ex.loss_mask]
        return cls(torch.tensor(ids, dtype=torch.int32), torch.tensor(mask, dtype=torch.uint8),
                   torch.tensor(offsets, dtype=torch.int64),
                   torch.tensor([ex.line for ex in examples], dtype=torch.int32))

    def to_bytes(self) -> bytes:
        return save({"tokens": self.tokens, "mask": self.mask, "offsets": self.offsets, "lines": self.lines})

    @classmethod
    def from_bytes(cls, data: bytes) -> "ExampleSet":
        t = load(data)
        return cls(t["tokens"], t["mask"], t["offsets"], t["lines"])


def examples_key(account_id: str, job_id: str, split: str) -> str:
    return blob_key("jobs", account_id, job_id, f"{split}-examples.safetensors")


def write_examples(blobs: BlobStore, account_id: str, job_id: str, split: str, examples: ExampleSet) -> None:
    blobs.write_bytes(examples_key(account_id, job_id, split), examples.to_bytes(), MAX_EXAMPLES_BYTES)


def read_examples(blobs: BlobStore, account_id: str, job_id: str, split: str) -> ExampleSet | None:
    key = examples_key(account_id, job_id, split)
    if not blobs.exists(key):
        return None
    return ExampleSet.from_bytes(blobs.read_bytes(key))
