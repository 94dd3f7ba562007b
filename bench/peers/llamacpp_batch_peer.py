"""llama.cpp serving many sequences at once on a GGUF, for bench/engine.py's batch-64 peer row.

Runs under bench/.venv-llamacpp (llama-cpp-python from PyPI, built by `make bench-peers`), as
its own process; reads a JSON job on stdin, prints one JSON object to stdout:

    {"warm": [[ids...], ...], "runs": [{"prompts": [[ids...], ...], "max_tokens": 128}, ...],
     "tokens": false}
    -> {"llama_cpp_python": "...", "settings": {...}, "runs": [{"seconds", "prompt_tokens",
        "generated_tokens", and with "tokens": true the generated ids per prompt}, ...]}

    bench/.venv-llamacpp/bin/python bench/peers/llamacpp_batch_peer.py GGUF --threads 2 < job.json

What llama.cpp's own llama-batched-bench / `batched` example do, through its C API (llama_batch,
llama_decode): one context holding every sequence (seq id = request index), each in its own KV
slice of n_ctx / n_seq cells (kv_unified off, llama.cpp's default),
the prompts fed as chunks of n_batch tokens (sequences packed back to back, a chunk may end inside
a prompt; logits kept only for each prompt's last token), then one llama_decode per step with one
token of every running sequence, greedy (numpy argmax over each output row of llama_get_logits),
ignore_eos: exactly max_tokens tokens per request, as the other rows of the benchmark. The memory
is cleared between runs (no prefix reuse). Each run is timed from the first llama_decode to the
last token, tokens given as ids (no tokenizer), like ours and vLLM's rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


class BatchedLlama:
    def __init__(self, gguf: str, n_ctx: int, n_seq: int, n_batch: int, n_ubatch: int, threads: int,
                 extra_bufts: bool = True):
        import llama_cpp as L
        self.L = L
        self._quiet = L.llama_log_callback(lambda level, text, data: None)  # kept: C holds the pointer
        L.llama_log_set(self._quiet, None)
        L.llama_backend_init()
        model_params = L.llama_model_default_params()
        model_params.use_extra_bufts = extra_bufts  # off: see llamacpp_launch.py
        self.model = L.llama_model_load_from_file(gguf.encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, n_ubatch, n_seq
        params.n_threads = params.n_threads_batch = threads
        # a KV slice of n_ctx / n_seq per sequence (llama.cpp's default): with one unified cache
        # every sequence's attention spans the whole cache, masked (measured here, 64 x 128: decode
        # 30.6 vs 233 tok/s)
        params.kv_unified = False
        params.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the context")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_batch = n_batch
        self.batch = L.llama_batch_init(max(n_batch, n_seq), 0, 1)
        self.settings = {"n_ctx": n_ctx, "n_seq_max": n_seq, "n_batch": n_batch, "n_ubatch": n_ubatch,
                         "threads": threads, "use_extra_bufts": extra_bufts, "kv_unified": False, "flash_attn": "llama.cpp default",
                         "type_k/type_v": "llama.cpp default (f16)"}

    def _decode(self, entries: list[tuple[int, int, int, bool]]):
        """entries: (token, pos, seq, wants_logits) -> numpy [n_outputs, vocab] of the flagged rows."""
        import numpy as np
        b = self.batch
        for i, (token, pos, seq, out) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, out
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        code = self.L.llama_decode(self.ctx, b)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        outputs = sum(1 for e in entries if e[3])
        if not outputs:
            return None
        ptr = self.L.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(outputs, self.n_vocab))

    def generate(self, prompts: list[list[int]], max_tokens: int) -> dict:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        started = time.perf_counter()
        nxt = [0] * len(prompts)
        flat = [(tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, tok in enumerate(p)]
        for start in range(0, len(flat), self.n_batch):   # prefill, n_batch tokens per llama_decode
            chunk = flat[start:start + self.n_batch]
            logits = self._decode(chunk)
            if logits is not None:
                for row, seq in enumerate(e[2] for e in chunk if e[3]):
                    nxt[seq] = int(logits[row].argmax())
        tokens = [[t] for t in nxt]
        for step in range(1, max_tokens):                 # decode: one token of every sequence
            logits = self._decode([(nxt[s], len(p) + step - 1, s, True) for s, p in enumerate(prompts)])
            nxt = [int(i) for i in logits.argmax(axis=1)]
            for seq, t in zip(tokens, nxt):
                seq.append(t)
        return {"seconds": time.perf_counter() - started, "prompt_tokens": sum(len(p) for p in prompts),
                "generated_tokens": sum(len(t) for t in tokens), "tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("gguf")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-batch", type=int, default=2048, help="tokens per llama_decode in prefill (ours: 2048)")
    p.add_argument("--n-ubatch", type=int, default=512)
    p.add_argument("--no-extra-bufts", action="store_true", help="no AMX / repacked weight buffers")
    args = p.parse_args()
    job = json.load(sys.stdin)
    import llama_cpp

    all_prompts = [job["warm"]] + [r["prompts"] for r in job["runs"]]
    longest = max(len(x) for prompts in all_prompts for x in prompts)
    n_seq = max(len(prompts) for prompts in all_prompts)
    max_new = max([r["max_tokens"] for r in job["runs"]] + [16])
    n_ctx = n_seq * (longest + max_new + 8)  # each sequence's slice fits its prompt and output
    llm = BatchedLlama(args.gguf, n_ctx, n_seq, args.n_batch, args.n_ubatch, args.threads,
                       extra_bufts=not args.no_extra_bufts)
    llm.generate(job["warm"], 16)   # its own prompts: pages the weights in, sizes the buffers
    runs = [llm.generate(r["prompts"], r["max_tokens"]) for r in job["runs"]]
    if not job.get("tokens"):
        for run in runs:
            del run["tokens"]
    print(json.dumps({"llama_cpp_python": llama_cpp.__version__, "settings": {**llm.settings, "longest_prompt": longest},
                      "runs": runs}))


if __name__ == "__main__":
    main()
