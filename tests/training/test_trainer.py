"""The trainer on the tiny random Llama: packed attention and chunked loss match a plain
per-example forward; same seed + data -> same adapter bits; a run resumed from a checkpoint
ends with exactly the adapter of an uninterrupted one."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fireplace.training.encoding import ExampleEncoder
from fireplace.training.example_store import ExampleSet
from fireplace.training.hyperparams import TrainConfig
from fireplace.training.loss import chunked_lm_loss
from fireplace.training.packing import IGNORE, build_batch, plan_epoch
from fireplace.training.trainer import Trainer, TrainerHooks
from fireplace.training.validation import encode_dataset
from tests.training.helpers import chat_lines
from tests.training.tiny_model import tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def examples(model_dir) -> ExampleSet:
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lines = [json.dumps(x).encode() for x in chat_lines(24)]
    return ExampleSet.from_examples(encode_dataset(lines, ExampleEncoder(tok, max_length=256)).examples)


CFG = TrainConfig(epochs=2, learning_rate=5e-3, batch_tokens=120, lora_rank=4, warmup_steps=2, seed=3,
                  loss_chunk_tokens=7)


def test_packing_plan_is_seeded_and_respects_budgets():
    lengths = [30, 50, 10, 90, 200, 5, 60]
    plan = plan_epoch(lengths, seed=1, epoch=0, batch_tokens=100, batch_samples=2)
    assert sorted(i for p in plan for i in p) == list(range(7))
    assert all(len(p) <= 2 and (sum(lengths[i] for i in p) <= 100 or len(p) == 1) for p in plan)
    assert plan == plan_epoch(lengths, seed=1, epoch=0, batch_tokens=100, batch_samples=2)
    assert plan != plan_epoch(lengths, seed=1, epoch=1, batch_tokens=100, batch_samples=2)


def test_packed_loss_equals_per_example_loss(model_dir, examples):
    trainer = Trainer(CFG, model_dir, examples)   # LoRA B starts at 0: the model is the base model
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="sdpa")
    pack = [0, 5, 9]
    batch = build_batch(examples, pack)
    assert batch.segments[-1] == batch.num_tokens and len(batch.segments) == 4
    with torch.no_grad():
        packed = float(trainer._loss_sum(batch))
        expected = 0.0
        for i in pack:
            ids, mask = examples.example(i)
            logits = ref(input_ids=ids.long()[None]).logits[0, :-1]
            targets = torch.where(mask[1:].bool(), ids.long()[1:], torch.full_like(ids.long()[1:], IGNORE))
            expected += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum",
                                                                ignore_index=IGNORE))
    assert packed == pytest.approx(expected, rel=1e-5)


def test_chunked_loss_and_gradient_match_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    targets[::3] = IGNORE
    chunked = chunked_lm_loss(hidden, head, targets, chunk=4)
    (g_chunked,) = torch.autograd.grad(chunked, hidden)
    full = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum", ignore_index=IGNORE)
    (g_full,) = torch.autograd.grad(full, hidden)
    assert float(chunked) == pytest.approx(float(full), rel=1e-6)
    assert torch.allclose(g_chunked, g_full, atol=1e-6)


class Recorder(TrainerHooks):
    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.steps, self.checkpoints = stop_at, [], []

    def on_step(self, metrics, trainer):
        self.steps.append(metrics)
        return self.stop_at is None or metrics.step < self.stop_at

    def on_checkpoint(self, checkpoint, trainer):
        self.checkpoints.append(checkpoint)


def test_training_is_deterministic_and_resume_is_exact(model_dir, examples):
    cfg = TrainConfig(**{**CFG.as_dict(), "checkpoint_interval": 3})
    first, rec1 = Trainer(cfg, model_dir, examples), Recorder()
    first.run(rec1)
    assert rec1.steps[-1].train_loss < rec1.steps[0].train_loss          # it learns
    assert [c.step for c in rec1.checkpoints] == list(range(3, first.total_steps, 3))
    assert all(m.tokens > 0 and m.grad_norm > 0 for m in rec1.steps)
    files = first.adapter_files()

    second = Trainer(cfg, model_dir, examples)
    second.run()
    assert second.adapter_files()["adapter_model.safetensors"] == files["adapter_model.safetensors"]

    # interrupted after step 7, resumed from the step-6 checkpoint (step 7 is redone)
    broken, rec3 = Trainer(cfg, model_dir, examples), Recorder(stop_at=7)
    assert broken.run(rec3).stopped
    resumed = Trainer(cfg, model_dir, examples)
    resumed.restore(rec3.checkpoints[-1].files)
    assert resumed.position.step == 6
    rec4 = Recorder()
    resumed.run(rec4)
    assert rec4.steps[0].step == 7 and rec4.steps[-1].step == first.total_steps
    got, want = resumed.adapter_state(), first.adapter_state()
    assert got.keys() == want.keys()
    assert max(float((got[k] - want[k]).abs().max()) for k in got) <= 1e-5
    assert resumed.adapter_files()["adapter_model.safetensors"] == files["adapter_model.safetensors"]


def test_output_loads_with_peft(model_dir, examples, tmp_path):
    from peft import PeftModel

    trainer = Trainer(TrainConfig(**{**CFG.as_dict(), "epochs": 1}), model_dir, examples)
    trainer.run()
    for name, data in trainer.adapter_files().items():
        (tmp_path / name).write_bytes(data)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and sorted(cfg["target_modules"]) == \
        ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path)).eval()
    ids = examples.example(0)[0].long()[None]
    trainer.model.eval()
    with torch.no_grad():
        ours = trainer.model.get_base_model()(input_ids=ids).logits
        theirs = peft_model(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_eval_each_epoch_early_stop_and_accumulation(model_dir, examples):
    class Evals(Recorder):
        def __init__(self):
            super().__init__()
            self.evals = []

        def on_epoch_end(self, epoch, eval_loss, trainer):
            self.evals.append((epoch, eval_loss))

    # lr 0: the eval loss cannot improve after the first epoch -> early stop after the second of 3
    flat = TrainConfig(**{**CFG.as_dict(), "epochs": 3, "learning_rate": 0.0, "early_stop": True})
    trainer, rec = Trainer(flat, model_dir, examples, examples), Evals()
    result = trainer.run(rec)
    assert result.early_stopped and [e for e, _ in rec.evals] == [0, 1]
    assert rec.evals[0][1] == pytest.approx(rec.evals[1][1]) and rec.evals[0][1] > 0
    one = Trainer(TrainConfig(**{**CFG.as_dict(), "epochs": 1}), model_dir, examples)
    two = Trainer(TrainConfig(**{**CFG.as_dict(), "epochs": 1, "grad_accum": 2}), model_dir, examples)
    assert two.total_steps == -(-len(one.plans[0]) // 2) and one.total_steps == len(one.plans[0])


def test_warm_start_continues_from_the_addon(model_dir, examples, tmp_path):
    first = Trainer(TrainConfig(**{**CFG.as_dict(), "epochs": 1}), model_dir, examples)
    first.run()
    for name, data in first.adapter_files().items():
        (tmp_path / name).write_bytes(data)
    warm = Trainer(TrainConfig(**{**CFG.as_dict(), "epochs": 1, "lora_rank": 16}), model_dir, examples,
                   warm_start_dir=tmp_path)
    assert sorted(warm.target_modules) == sorted(first.target_modules)
    assert int(warm.model.peft_config["default"].r) == 4          # the addon's rank, not loraRank
    got, want = warm.adapter_state(), first.adapter_state()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_learning_rate_warms_up_then_decays_linearly_to_zero(model_dir, examples):
    """learningRateWarmupSteps W: step s (0-based) trains at lr * (s+1)/(W+1) while s < W, then
    at lr * (total - s)/(total - W), reaching 0 after the last step."""
    from fireplace.training.schedule import WarmupLinearDecay

    lr, warmup = 1e-2, 3
    cfg = TrainConfig(epochs=1, learning_rate=lr, warmup_steps=warmup, batch_tokens=60, lora_rank=4, seed=1)
    trainer, rec = Trainer(cfg, model_dir, examples), Recorder()
    trainer.run(rec)
    total = trainer.total_steps
    assert total > warmup + 3
    seen = [m.learning_rate for m in rec.steps]
    want = [lr * (s + 1) / (warmup + 1) for s in range(warmup)] + \
           [lr * (total - s) / (total - warmup) for s in range(warmup, total)]
    assert seen == pytest.approx(want, rel=1e-12)
    assert seen[:warmup + 1] == sorted(seen[:warmup + 1]) and seen[warmup:] == sorted(seen[warmup:], reverse=True)
    assert seen[warmup] == pytest.approx(lr) and WarmupLinearDecay(warmup, total)(total) == 0.0
    assert trainer.scheduler.get_last_lr()[0] == 0.0


def test_gradient_accumulation_equals_one_merged_pack(model_dir, examples):
    """gradientAccumulationSteps 2 over packs p0, p1 is one optimizer step on the mean over both
    packs' target tokens: the same update as one pack holding both (dropout off, which draws
    different masks per forward)."""
    cfg = TrainConfig(epochs=1, learning_rate=1e-2, batch_tokens=60, lora_rank=4, seed=1, grad_accum=2,
                      lora_dropout=0.0)
    accumulated, merged = Trainer(cfg, model_dir, examples), Trainer(cfg, model_dir, examples)
    p0, p1 = accumulated.plans[0][:2]
    assert p0 and p1
    a = accumulated._step([p0, p1])
    b = merged._step([p0 + p1])
    assert a.tokens == b.tokens and a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-5)
    got, want = accumulated.adapter_state(), merged.adapter_state()
    assert max(float((got[k] - want[k]).abs().max()) for k in got) <= 1e-6
    assert max(float(v.abs().max()) for k, v in got.items() if "lora_B" in k) > 1e-3   # it moved
    # and not the same as stepping on one pack only
    single = Trainer(cfg, model_dir, examples)
    single._step([p0])
    other = single.adapter_state()
    assert max(float((other[k] - want[k]).abs().max()) for k in got) > 1e-4
