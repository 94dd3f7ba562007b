"""Dataset validation against the base model: every example through the tokenizer and chat
template, with loss masks; over-long examples truncated and counted.

    outcome = encode_dataset(lines, encoder)   # lines: iterable of raw JSONL bytes
    outcome.examples      -> [EncodedExample] with something to train on
    outcome.truncated     -> how many were cut to maxContextLength
    outcome.dropped       -> how many had no trained token left after the cut (skipped)
A dataset whose examples are all longer than maxContextLength raises TrainingError naming the
limit, the count and the shortest and longest lines (even if their cut parts still hold
assistant tokens: a job that trains on no whole example is not what anyone asked for); so
does one with no example left to train on.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from fireplace.training.dataset_format import CHAT, COMPLETION
from fireplace.training.encoding import EncodedExample, ExampleEncoder
from fireplace.training.errors import TrainingError

MAX_EVAL_CARVEOUT = 1000
CARVEOUT_FRACTION = 0.1


@dataclass
class EncodeOutcome:
    examples: list[EncodedExample] = field(default_factory=list)
    total: int = 0
    truncated: int = 0
    dropped: int = 0
    longest: int = 0
    longest_line: int = 0
    shortest: int = 0
    shortest_line: int = 0
    first_truncated_line: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


def encode_dataset(lines: Iterable[bytes], encoder: ExampleEncoder, *, what: str = "dataset") -> EncodeOutcome:
    """Each line is CHAT when it has `messages`, else COMPLETION (upload validation made one file one format)."""
    out = EncodeOutcome()
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except ValueError as exc:  # format validation at upload makes this rare
            raise TrainingError(f"{what} line {lineno}: not valid JSON ({exc})") from None
        ex = encoder.encode(obj, lineno, CHAT if "messages" in obj else COMPLETION)
        out.total += 1
        if ex.original_length > out.longest:
            out.longest, out.longest_line = ex.original_length, lineno
        if not out.shortest_line or ex.original_length < out.shortest:
            out.shortest, out.shortest_line = ex.original_length, lineno
        if ex.truncated:
            out.truncated += 1
            out.first_truncated_line = out.first_truncated_line or lineno
        if ex.is_empty:
            out.dropped += 1
            continue
        out.examples.append(ex)
    if out.total == 0:
        raise TrainingError(f"{what} has no examples")
    if out.truncated == out.total:
        raise TrainingError(
            f"all {out.total} examples of the {what} are longer than maxContextLength={encoder.max_length} "
            f"tokens (the shortest, line {out.shortest_line}, has {out.shortest} tokens; the longest, line "
            f"{out.longest_line}, {out.longest}): raise maxContextLength to at least {out.shortest} or shorten "
            "the examples")
    if not out.examples:
        raise TrainingError(f"no example of the {what} has a token to train on after truncation to "
                            f"maxContextLength={encoder.max_length} (check assistant messages and their weights)")
    return out


def carve_out(examples: list[EncodedExample], seed: int) -> tuple[list[EncodedExample], list[EncodedExample]]:
    """(train, eval): 10% of the examples (at least 1, at most 1000) held out, chosen by seed.
    Fewer than 2 examples: nothing is held out."""
    if len(examples) < 2:
        return examples, []
    n_eval = min(MAX_EVAL_CARVEOUT, max(1, int(len(examples) * CARVEOUT_FRACTION)))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])
