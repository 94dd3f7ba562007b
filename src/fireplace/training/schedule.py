"""Learning rate: linear warmup over `warmup` steps, then linear decay to 0 at `total`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupLinearDecay:
    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))
