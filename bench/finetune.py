"""Fine-tuning throughput and memory: our trainer vs TRL's SFTTrainer + PEFT, same run.

Workload: SmolLM2-135M-Instruct (the bundled model), fp32 on CPU, LoRA r=8 alpha=16
dropout 0.05 on all linear projections, AdamW lr 2e-4 with linear decay, grad clip 1.0,
one epoch over single-turn chat examples (a short system message, a question, an answer) whose
token lengths, measured with the model's tokenizer and chat template, spread evenly over
32-1024 (seeded synthetic text, `synth_chats`), `--batch-samples` examples per optimizer step,
loss on the assistant turn only, gradient checkpointing off and fp32 for all three:
  - ours:              training.trainer (packing without padding, per-example attention,
                       chunked LM-head loss over target tokens only)
  - trl-default:       SFTTrainer with its default collation (pads each batch to its longest)
  - trl-padding-free:  SFTTrainer(padding_free=True): the batch flattened into one row with
                       position ids (transformers' SDPA path builds the block mask from them)
Each runs in its own process (peak RSS is per process). Reported: training tokens/s counting
non-padding tokens only, over the training loop's wall time (model loading excluded); peak
RSS and its growth over the RSS after loading; final loss = mean token loss on the assistant
turns of a fixed 8-example subset after training, computed by the same plain forward for all.
One invocation runs the three configurations one after the other and writes every key of the
results file itself (per configuration also its start and end time and the load average at its
end); it exits 1 when one failed (the file then holds its error and output tail).

    nice -n -10 .venv/bin/python bench/finetune.py --examples 48 --batch-samples 4 \
        --out bench/results/finetune-cpu.json
    .venv/bin/python bench/finetune.py --data-only    # the workload's measured token lengths only
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue side "
         "kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force education "
         "quickly slowly carefully always never often bright dark simple clear open close build make take give").split()
CONFIGS = ("ours", "trl-default", "trl-padding-free")
LR, RANK, ALPHA, DROPOUT, MIN_LEN, MAX_LEN, EVAL_N = 2e-4, 8, 16, 0.05, 32, 1024, 8
# An explicit short system message: without one SmolLM2's template adds its 20-token default
# and no example could be shorter than 36 tokens.
SYSTEM = "Answer."


def synth_chats(measure, n: int, seed: int) -> list[dict]:
    """n single-turn chats whose lengths, as `measure(chat)` counts them (the templated example
    the trainer encodes), spread evenly over [MIN_LEN, MAX_LEN]: n evenly spaced targets, both
    ends included, in a seeded order, each met by the most words (bisection) whose chat is not
    longer. 20% of the words are the prompt."""
    rng = random.Random(seed)
    targets = [round(MIN_LEN + (MAX_LEN - MIN_LEN) * i / max(1, n - 1)) for i in range(n)]
    rng.shuffle(targets)
    out = []
    for target in targets:
        words = [rng.choice(WORDS) for _ in range(2 * MAX_LEN)]  # more than 1024 tokens' worth
        lo, hi = 2, len(words)
        while lo < hi:  # the most words whose chat is at most `target` tokens
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if measure(_chat(words[:mid])) <= target else (lo, mid - 1)
        out.append(_chat(words[:lo]))
    return out


def _chat(words: list[str]) -> dict:
    cut = max(1, len(words) // 5)
    return {"prompt": " ".join(words[:cut]).capitalize() + "?", "completion": " ".join(words[cut:]).capitalize() + "."}


def as_messages(chat: dict) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": chat["prompt"]},
                         {"role": "assistant", "content": chat["completion"]}]}


def length_stats(lengths: list[int]) -> dict:
    ordered = sorted(lengths)
    return {"min": ordered[0], "max": ordered[-1], "mean": sum(ordered) / len(ordered), "total": sum(ordered),
            "deciles": [ordered[len(ordered) * q // 10] for q in range(1, 10)]}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def eval_loss(model, tokenizer, chats: list[dict]) -> float:
    """Mean token loss on the assistant turns (same tokenization as ours), plain forward."""
    import torch

    from fireplace.training.encoding import ExampleEncoder

    enc = ExampleEncoder(tokenizer, max_length=MAX_LEN)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for chat in chats:
            ex = enc.encode(as_messages(chat), 0, "CHAT")
            ids = torch.tensor(ex.input_ids)[None]
            mask = torch.tensor(ex.loss_mask)
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = torch.where(mask[1:].bool(), ids[0, 1:], torch.full_like(ids[0, 1:], -100))
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum", ignore_index=-100))
            count += int(mask[1:].sum())
    return total / max(1, count)


def run_ours(model_dir: Path, chats: list[dict], batch: int, seed: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from fireplace.training.encoding import ExampleEncoder
    from fireplace.training.example_store import ExampleSet
    from fireplace.training.hyperparams import TrainConfig
    from fireplace.training.trainer import Trainer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = ExampleEncoder(tok, max_length=MAX_LEN)
    examples = ExampleSet.from_examples([enc.encode(as_messages(c), i + 1, "CHAT") for i, c in enumerate(chats)])
    cfg = TrainConfig(epochs=1, learning_rate=LR, lora_rank=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                      max_context_length=MAX_LEN, batch_tokens=1 << 30, batch_samples=batch, seed=seed)
    trainer = Trainer(cfg, model_dir, examples, device=torch.device("cpu"), dtype=torch.float32)
    loaded = rss_mb()
    started = time.perf_counter()
    losses = []

    class Hooks:
        def on_step(self, m, t):
            losses.append(m.train_loss)
            return True

        def on_checkpoint(self, c, t):
            pass

        def on_epoch_end(self, e, l, t):
            pass
    trainer.interval = 1 << 30
    trainer.run(Hooks())
    wall = time.perf_counter() - started
    tokens = sum(examples.lengths())
    model = trainer.model.get_base_model()
    return {"tokens": tokens, "train_s": wall, "tokens_per_s": tokens / wall, "steps": len(losses),
            "rss_after_load_mb": loaded, "peak_rss_mb": peak_rss_mb(), "last_step_loss": losses[-1],
            "final_loss": eval_loss(model, tok, chats[:EVAL_N])}


def run_trl(model_dir: Path, chats: list[dict], batch: int, seed: int, padding_free: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    data = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM},
                                          {"role": "user", "content": c["prompt"]}],
                               "completion": [{"role": "assistant", "content": c["completion"]}]} for c in chats])
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            marks["begin"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            marks["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=LR,
                         lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                         # padding-free without packing does not truncate: TRL asks for max_length=None
                         # (every synthetic example is already within MAX_LEN tokens)
                         max_length=None if padding_free else MAX_LEN, bf16=False, fp16=False, gradient_checkpointing=False, logging_steps=1,
                         save_strategy="no", report_to=[], seed=seed, padding_free=padding_free,
                         dataloader_num_workers=0, use_cpu=True, optim="adamw_torch", disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"),
                             callbacks=[Clock()])
        tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
        loaded = rss_mb()
        trainer.train()
    wall = marks["end"] - marks["begin"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens": tokens, "train_s": wall, "tokens_per_s": tokens / wall, "steps": len(losses),
            "rss_after_load_mb": loaded, "peak_rss_mb": peak_rss_mb(), "last_step_loss": losses[-1] if losses else None,
            "final_loss": eval_loss(trainer.model, tok, chats[:EVAL_N])}


def worker(args) -> None:
    from fireplace.catalog.smollm2 import ensure_smollm2

    model_dir = Path(args.model_dir) if args.model_dir else ensure_smollm2()
    chats = json.loads(Path(args.data).read_text())
    if args.worker == "ours":
        result = run_ours(model_dir, chats, args.batch_samples, args.seed)
    else:
        result = run_trl(model_dir, chats, args.batch_samples, args.seed, args.worker == "trl-padding-free")
    Path(args.result).write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=48)
    p.add_argument("--batch-samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="a subset, for debugging only (the results then say allConfigs: false)")
    p.add_argument("--out", default="bench/results/finetune-cpu.json")
    p.add_argument("--model-dir", help="another HF model directory (default: the bundled SmolLM2)")
    p.add_argument("--data-only", action="store_true", help="print the workload's token lengths; train nothing")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from transformers import AutoTokenizer

    from fireplace.catalog.smollm2 import ensure_smollm2
    model_dir = Path(args.model_dir) if args.model_dir else ensure_smollm2()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    from fireplace.training.encoding import ExampleEncoder
    enc = ExampleEncoder(tok, max_length=4 * MAX_LEN)  # measures, never truncates
    measure = lambda chat: len(enc.encode(as_messages(chat), 0, "CHAT").input_ids)  # noqa: E731
    chats = synth_chats(measure, args.examples, args.seed)
    lengths = [measure(c) for c in chats]
    if args.data_only:
        print(json.dumps({"examples": len(chats), "example_tokens": length_stats(lengths)}, indent=2))
        return

    import torch
    import trl

    configs = args.configs.split(",")
    started_at = utc_now()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chats.json"
        data.write_text(json.dumps(chats))
        for name in configs:
            res = Path(tmp) / f"{name}.json"
            started, started_utc = time.perf_counter(), utc_now()
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--data", str(data), "--result",
                                   str(res), "--batch-samples", str(args.batch_samples), "--seed", str(args.seed)]
                                  + (["--model-dir", args.model_dir] if args.model_dir else []),
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            sys.stdout.write(proc.stdout)
            ran = {"started": started_utc, "finished": utc_now(), "process_s": time.perf_counter() - started,
                   "load_average_after": os.getloadavg()}
            if proc.returncode != 0 or not res.exists():
                results[name] = {"error": f"exit code {proc.returncode}", "output_tail": proc.stdout[-4000:], **ran}
                continue
            results[name] = {**json.loads(res.read_text()), **ran}
            print(name, json.dumps(results[name]), flush=True)
    ours = results.get("ours", {})
    summary = {}
    for name in ("trl-default", "trl-padding-free"):
        other = results.get(name, {})
        if "tokens_per_s" in ours and "tokens_per_s" in other:
            summary[name] = {
                "speedup_tokens_per_s": ours["tokens_per_s"] / other["tokens_per_s"],
                "peak_rss_ratio": ours["peak_rss_mb"] / other["peak_rss_mb"],
                "rss_growth_ratio": (ours["peak_rss_mb"] - ours["rss_after_load_mb"])
                / max(1e-9, other["peak_rss_mb"] - other["rss_after_load_mb"]),
                "final_loss_rel_diff": (ours["final_loss"] - other["final_loss"]) / other["final_loss"]}
    report = {"benchmark": "finetune", "model": "SmolLM2-135M-Instruct (fp32, CPU)",
              "workload": {"examples": args.examples, "batch_samples": args.batch_samples, "epochs": 1,
                           "lora": {"r": RANK, "alpha": ALPHA, "dropout": DROPOUT, "targets": "all linear"},
                           "learning_rate": LR, "max_length": MAX_LEN, "seed": args.seed, "system_message": SYSTEM,
                           "example_tokens": length_stats(lengths)},
              "versions": {"torch": torch.__version__, "trl": trl.__version__},
              "threads": torch.get_num_threads(), "argv": sys.argv[1:], "nice": os.nice(0),
              "configs": configs, "allConfigs": sorted(configs) == sorted(CONFIGS), "started": started_at,
              "finished": utc_now(), "load_average_at_end": os.getloadavg(),
              "results": results, "ours_vs": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    failed = [name for name, r in results.items() if "error" in r]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (their output tails are in {args.out})")


if __name__ == "__main__":
    main()
