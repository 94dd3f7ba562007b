"""llama.cpp single-stream decode on a GGUF, for bench/single_stream.py's peer row.

Runs under bench/.venv-llamacpp (llama-cpp-python from PyPI, built here by `make bench-peers`),
as its own process: prints one JSON object to stdout.

    bench/.venv-llamacpp/bin/python bench/peers/llamacpp_peer.py GGUF --tokens 1,2,3 --new-tokens 128 --threads 1

The same measurement as ours: the prompt's token ids evaluated at once (prefill), then
new_tokens - 1 greedy decode steps of one token each (llama_decode through Llama.eval; argmax
over the last logits in numpy), each step timed; --repeats runs, the fastest kept.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def run_once(llm, prompt: list[int], new_tokens: int) -> dict:
    import numpy as np

    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    prefill_ms = (time.perf_counter() - started) * 1e3
    steps, out = [], [nxt]
    for _ in range(new_tokens - 1):
        t = time.perf_counter()
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        steps.append((time.perf_counter() - t) * 1e3)
        out.append(nxt)
    return {"prefill_ms": prefill_ms, "decode_ms_mean": statistics.mean(steps),
            "decode_ms_median": statistics.median(steps), "decode_steps": len(steps), "tokens": out}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("gguf")
    p.add_argument("--tokens", required=True, help="prompt token ids, comma-separated")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-extra-bufts", action="store_true", help="no AMX / repacked weight buffers")
    args = p.parse_args()
    import llama_cpp

    prompt = [int(t) for t in args.tokens.split(",")]
    if args.no_extra_bufts:  # Llama() takes no such argument: its default params, changed (llamacpp_launch.py)
        import llama_cpp.llama_cpp as low  # the module Llama() reads its defaults from
        defaults = low.llama_model_default_params

        def without_extra_bufts():
            params = defaults()
            params.use_extra_bufts = False
            return params
        low.llama_model_default_params = without_extra_bufts
    llm = llama_cpp.Llama(model_path=args.gguf, n_ctx=len(prompt) + args.new_tokens + 8, n_threads=args.threads,
                          n_threads_batch=args.threads, n_batch=512, logits_all=True, verbose=False)
    run_once(llm, prompt, 4)   # warm-up: its own short run (page in the weights)
    runs = [run_once(llm, prompt, args.new_tokens) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["decode_ms_mean"])
    print(json.dumps({"llama_cpp_python": llama_cpp.__version__, "threads": args.threads,
                      "use_extra_bufts": not args.no_extra_bufts,
                      **{k: v for k, v in best.items() if k != "tokens"},
                      "tok_s": 1e3 / best["decode_ms_mean"], "tokens": best["tokens"],
                      "runs": [{k: v for k, v in r.items() if k != "tokens"} for r in runs]}))


if __name__ == "__main__":
    main()
