"""Single-stream decode per weight precision: one request, 32-token prompt, 128 new tokens.

For fp32, int8, int4 (EngineConfig.quantization) and the bundled GGUF's own Q4_1 blocks
(EngineConfig.gguf_file), on SmolLM2-135M-Instruct, CPU, in one run:
  - the machine's read bandwidth, measured here (torch sum over a 512 MB fp32 tensor, best of
    5, at the engine's thread count) and the time to read the weights once in each format;
  - per-token decode time (the engine's step loop, prefill excluded) against that read time;
  - perplexity on tests/data/perplexity.txt (the engine's prompt logprobs) and greedy-token
    agreement with fp32 over 20 prompts (16 new tokens each, batched); both again with at most
    8 tokens per step ("small_steps": the text in chunks of 8, 8 prompts at a time), the path of
    a decode step with few users, where the quantized kernels round activations to int8;
  - os.getloadavg() before and after each phase: the machine is shared, so read the figures
    with the load next to them.
  - the peer: llama.cpp (bench/.venv-llamacpp, `make bench-peers`) on the same GGUF, same
    prompt token ids, same thread count, in its own process (bench/peers/llamacpp_peer.py),
    after our rows; ratio = our GGUF row's decode tok/s over llama.cpp's.

    nice -n 10 .venv/bin/python bench/single_stream.py [--precisions fp32,int8,int4,gguf] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from fireplace.catalog.smollm2 import ensure_smollm2, find_smollm2_gguf
from fireplace.engine.backend_config import BackendConfig
from fireplace.engine.engine_config import EngineConfig
from fireplace.engine.llm_engine import LLMEngine
from fireplace.engine.sampling_params import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from peers import llamacpp_launch  # noqa: E402
from tests.engine.smollm2_prompts import PROMPTS  # noqa: E402

TEXT = ROOT / "tests" / "data" / "perplexity.txt"
SMALL_STEP_TOKENS = BackendConfig().quant_gemv_max_tokens  # the largest step the quantized GEMV takes


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def read_bandwidth_gbs(threads: int) -> float:
    """Best of 5 sums over 512 MB of fp32 (a read-only stream, like a decode step's weights)."""
    torch.set_num_threads(threads)
    x = torch.ones(128 << 20)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best / 1e9


def engine_for(precision: str, model_dir: str, threads: int, small_steps: bool = False) -> LLMEngine:
    """small_steps: at most SMALL_STEP_TOKENS tokens per step (prompts in chunks of that many),
    so that every projection takes the path of a decode step with few users: for int8 / int4 /
    GGUF the quantized GEMV, which rounds activations to int8 (BackendConfig.quant_activations)."""
    extra = {"fp32": {}, "int8": {"quantization": "int8"}, "int4": {"quantization": "int4"},
             "gguf": {"gguf_file": str(find_smollm2_gguf())}}[precision]
    limits = (dict(max_num_seqs=SMALL_STEP_TOKENS, max_num_batched_tokens=SMALL_STEP_TOKENS) if small_steps
              else dict(max_num_seqs=len(PROMPTS)))
    return LLMEngine(EngineConfig(model=model_dir, num_threads=threads, kv_cache_bytes=128 << 20, **limits, **extra))


def weight_bytes(engine: LLMEngine) -> int:
    """Bytes of the projections + lm_head a decode step reads (quantized: as stored)."""
    if engine.quantization is not None:
        return engine.quantization.quantized_bytes
    from fireplace.engine.layers.linear import Linear
    seen, total = set(), 0
    for module in engine.model.modules():
        if isinstance(module, Linear) and module.weight.data_ptr() not in seen:
            seen.add(module.weight.data_ptr())
            total += module.weight.numel() * module.weight.element_size()
    return total


def single_stream(engine: LLMEngine, prompt_ids: list[int], new_tokens: int, repeats: int) -> dict:
    runs = []
    for i in range(repeats):
        engine.add_request(f"single-{i}", prompt_ids, SamplingParams(temperature=0, max_tokens=new_tokens,
                                                                      ignore_eos=True))
        steps, cpu = [], []
        while engine.has_unfinished_requests():
            start, start_cpu = time.perf_counter(), time.thread_time()
            engine.step()
            steps.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
        decode = steps[1:]  # steps[0]: the prefill (and the first token)
        runs.append({"prefill_ms": steps[0] * 1e3, "decode_ms_mean": statistics.mean(decode) * 1e3,
                     "decode_ms_median": statistics.median(decode) * 1e3, "decode_steps": len(decode),
                     # the engine thread's CPU time per step: at 1 thread, less sensitive than wall time to
                     # other processes taking the core (not to their share of memory bandwidth)
                     "decode_cpu_ms_median": statistics.median(cpu[1:]) * 1e3})
    best = min(runs, key=lambda r: r["decode_ms_mean"])
    return {**best, "tok_s": 1e3 / best["decode_ms_mean"], "runs": runs}


def perplexity(engine: LLMEngine, text_ids: list[int]) -> float:
    out = engine.generate([text_ids], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    logprobs = [lp.logprob for lp in out.prompt_logprobs[1:]]
    return math.exp(-sum(logprobs) / len(logprobs))


def greedy(engine: LLMEngine, tokens: int) -> list[list[int]]:
    outs = engine.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outs]


def agreement(ref: list[list[int]], got: list[list[int]]) -> dict:
    same_positions = sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g))
    prefix = []
    for r, g in zip(ref, got):
        n = next((i for i, (a, b) in enumerate(zip(r, g)) if a != b), len(r))
        prefix.append(n / len(r))
    return {"token_agreement": same_positions / sum(len(r) for r in ref),
            "mean_matching_prefix": statistics.mean(prefix),
            "identical_sequences": sum(r == g for r, g in zip(ref, got))}


def llama_cpp_peer(prompt: list[int], args) -> dict:
    if not llamacpp_launch.PYTHON.exists():
        return {"error": "llama.cpp not run: bench/.venv-llamacpp is missing (make bench-peers)"}
    before = load()
    proc, note = llamacpp_launch.run_peer("llamacpp_peer.py", [
        str(find_smollm2_gguf()), "--tokens", ",".join(map(str, prompt)), "--new-tokens", str(args.new_tokens),
        "--threads", str(args.threads), "--repeats", str(args.repeats)], timeout=1800)
    if proc.returncode != 0:
        return {"error": f"llama.cpp peer exited with {proc.returncode}: {proc.stderr[-500:]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["loadavg"] = [before, load()]
    if note:
        out["note"] = note
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", default="fp32,int8,int4,gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--agreement-tokens", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "single_stream.json"))
    args = parser.parse_args()

    model_dir = str(ensure_smollm2())
    result = {"model": "SmolLM2-135M-Instruct", "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
              "perplexity_text": str(TEXT.relative_to(ROOT)), "loadavg_start": load(),
              "rows": {}}
    result["read_bandwidth_gbs"] = read_bandwidth_gbs(args.threads)
    result["loadavg_after_bandwidth"] = load()
    print(f"read bandwidth {result['read_bandwidth_gbs']:.1f} GB/s, load {result['loadavg_after_bandwidth']}", flush=True)
    reference = None
    for precision in args.precisions.split(","):
        engine = engine_for(precision, model_dir, args.threads)
        tok = engine.tokenizer
        text_ids = tok(TEXT.read_text()).input_ids
        row = {"backend": engine.backend.describe(), "weight_bytes": weight_bytes(engine), "loadavg": [load()]}
        row["weight_read_ms"] = row["weight_bytes"] / (result["read_bandwidth_gbs"] * 1e9) * 1e3
        engine.generate(["Hello"], SamplingParams(temperature=0, max_tokens=4))  # warm-up
        row["single_stream"] = single_stream(engine, text_ids[:args.prompt_tokens], args.new_tokens, args.repeats)
        row["per_token_vs_weight_read"] = row["single_stream"]["decode_ms_mean"] / row["weight_read_ms"]
        row["per_token_median_vs_weight_read"] = row["single_stream"]["decode_ms_median"] / row["weight_read_ms"]
        row["loadavg"].append(load())
        row["perplexity"] = perplexity(engine, text_ids)
        tokens = greedy(engine, args.agreement_tokens)
        if reference is None:
            reference = tokens
        row["greedy_vs_first_row"] = agreement(reference, tokens)
        del engine
        # the same in steps of few tokens: the quality a single user's decode steps have
        small = engine_for(precision, model_dir, args.threads, small_steps=True)
        row["perplexity_small_steps"] = perplexity(small, text_ids)
        row["greedy_small_steps_vs_first_row"] = agreement(reference, greedy(small, args.agreement_tokens))
        del small
        row["loadavg"].append(load())
        result["rows"][precision] = row
        s = row["single_stream"]
        print(f"{precision}: {s['tok_s']:.1f} tok/s ({s['decode_ms_mean']:.1f} ms/token, weights "
              f"{row['weight_bytes'] / 1e6:.0f} MB = {row['weight_read_ms']:.1f} ms to read, "
              f"x{row['per_token_vs_weight_read']:.2f}), ppl {row['perplexity']:.3f} "
              f"(small steps {row['perplexity_small_steps']:.3f}), agreement "
              f"{row['greedy_vs_first_row']['token_agreement']:.3f} (small steps "
              f"{row['greedy_small_steps_vs_first_row']['token_agreement']:.3f}), load {row['loadavg']}", flush=True)
    fp32 = result["rows"].get("fp32")
    if fp32:
        for row in result["rows"].values():
            row["perplexity_vs_fp32"] = row["perplexity"] / fp32["perplexity"] - 1
            row["perplexity_small_steps_vs_fp32"] = row["perplexity_small_steps"] / fp32["perplexity"] - 1
            row["speedup_vs_fp32"] = row["single_stream"]["tok_s"] / fp32["single_stream"]["tok_s"]
    result["peer"] = llama_cpp_peer(text_ids[:args.prompt_tokens], args)
    ours = result["rows"].get("gguf")
    if ours and "tok_s" in result["peer"]:
        result["gguf_vs_llama_cpp_decode_tok_s"] = ours["single_stream"]["tok_s"] / result["peer"]["tok_s"]
        print(f"llama.cpp: {result['peer']['tok_s']:.1f} tok/s; ours (GGUF) / llama.cpp: "
              f"{result['gguf_vs_llama_cpp_decode_tok_s']:.2f}x", flush=True)
    result["loadavg_end"] = load()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
