"""bench/finetune.py's workload: chats whose token lengths, as the trainer encodes them
(tokenizer + chat template), spread evenly over 32-1024 for whatever tokenizer it is given
(here the tiny one; `bench/finetune.py --data-only` prints them for SmolLM2's)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoTokenizer

from fireplace.training.encoding import ExampleEncoder
from tests.training.tiny_model import tiny_model_dir

BENCH = Path(__file__).resolve().parents[2] / "bench" / "finetune.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_finetune", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_chat_lengths_spread_evenly_over_32_to_1024(tmp_path):
    bench = _bench()
    enc = ExampleEncoder(AutoTokenizer.from_pretrained(str(tiny_model_dir(tmp_path))), max_length=4096)
    measure = lambda chat: len(enc.encode(bench.as_messages(chat), 0, "CHAT").input_ids)  # noqa: E731
    n = 24
    chats = bench.synth_chats(measure, n, seed=0)
    lengths = sorted(measure(c) for c in chats)
    # the shortest chat this template allows (SmolLM2's: 23 tokens; this byte-level one's: more)
    floor = measure({"prompt": "Year?", "completion": "Day."})
    targets = [round(32 + (1024 - 32) * i / (n - 1)) for i in range(n)]
    slack = 8   # one word is several tokens of this small vocabulary (SmolLM2's lengths hit the targets)
    assert 1024 - slack <= lengths[-1] <= 1024 and lengths[0] <= max(32, floor + slack)
    assert all(t - slack <= got <= t for t, got in zip(targets, lengths) if t >= floor + slack), (targets, lengths)
    assert all(c["prompt"] and c["completion"] for c in chats)
    assert bench.synth_chats(measure, n, seed=0) == chats and bench.synth_chats(measure, n, seed=1) != chats
    stats = bench.length_stats(lengths)
    assert (stats["min"], stats["max"], stats["total"]) == (lengths[0], lengths[-1], sum(lengths))
    assert stats["deciles"] == sorted(stats["deciles"]) and len(stats["deciles"]) == 9
