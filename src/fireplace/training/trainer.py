"""The LoRA SFT loop, with no knowledge of the database: a job worker (training.worker) and
the benchmark both drive it through `TrainerHooks`.

    trainer = Trainer(config, model_dir, train_set, eval_set)
    trainer.restore(checkpoint)              # optional: continue exactly where it stopped
    result = trainer.run(hooks)              # -> RunResult(final_step, early_stopped, stopped)
    trainer.adapter_files()                  # {"adapter_config.json": b..., "adapter_model.safetensors": b...}

One optimizer step = `grad_accum` packed micro-batches (training.packing); the loss is the
mean over the step's target tokens (so micro-batches of different sizes weigh by tokens).
Everything that decides the next step's numbers is in a checkpoint: adapter weights,
optimizer and scheduler state, RNG states and the data position, so a resumed run computes
bit-for-bit what the uninterrupted one would have (on the same CPU and thread count).
"""
from __future__ import annotations

import io
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from fireplace.training.example_store import ExampleSet
from fireplace.training.hyperparams import MAX_GRAD_NORM, TrainConfig
from fireplace.training.lora import build_lora_model, pick_device
from fireplace.training.loss import chunked_lm_loss
from fireplace.training.packing import PackedBatch, build_batch, plan_epoch
from fireplace.training.schedule import WarmupLinearDecay

ADAPTER_FILE, STATE_FILE = "adapter_model.safetensors", "trainer_state.pt"


@dataclass
class Position:
    epoch: int = 0          # epoch in progress
    pack: int = 0           # index of the next pack of that epoch's plan
    step: int = 0           # optimizer steps done
    tokens: int = 0         # tokens trained on so far (all real tokens; there is no padding)
    best_eval: float | None = None
    eval_losses: list[float] = field(default_factory=list)


@dataclass
class StepMetrics:
    step: int
    epoch: int
    train_loss: float
    learning_rate: float
    grad_norm: float
    tokens: int
    tokens_per_second: float
    eval_loss: float | None = None


@dataclass
class Checkpoint:
    step: int
    epoch: int
    files: dict[str, bytes]      # ADAPTER_FILE, STATE_FILE
    metrics: dict
    is_final: bool = False


@dataclass
class RunResult:
    final_step: int
    early_stopped: bool = False
    stopped: bool = False        # a hook asked to stop (cancel)


class TrainerHooks:
    """Override what you need; on_step returning False stops the run after that step."""

    def on_step(self, metrics: StepMetrics, trainer: "Trainer") -> bool:
        return True

    def on_checkpoint(self, checkpoint: Checkpoint, trainer: "Trainer") -> None:
        pass

    def on_epoch_end(self, epoch: int, eval_loss: float | None, trainer: "Trainer") -> None:
        pass


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, config: TrainConfig, model_dir: Path, train: ExampleSet, eval_set: ExampleSet | None = None,
                 *, warm_start_dir: Path | None = None, base_model_name: str = "",
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        self.config, self.train, self.eval_set = config, train, eval_set
        auto_device, auto_dtype = pick_device()
        self.device, self.dtype = device or auto_device, dtype or auto_dtype
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.model, self.target_modules = build_lora_model(model_dir, config, self.device, self.dtype,
                                                           warm_start_dir=warm_start_dir,
                                                           base_model_name=base_model_name)
        base = self.model.get_base_model()
        self.decoder, self.lm_head = base.get_decoder(), base.get_output_embeddings()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.param_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        lengths = train.lengths()
        self.plans = [plan_epoch(lengths, seed=config.seed, epoch=e, batch_tokens=config.batch_tokens,
                                 batch_samples=config.batch_samples) for e in range(config.epochs)]
        self.steps_per_epoch = [math.ceil(len(p) / config.grad_accum) for p in self.plans]
        self.total_steps = sum(self.steps_per_epoch)
        self.total_tokens = sum(lengths) * config.epochs
        self.interval = config.interval_for(self.total_steps)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupLinearDecay(config.warmup_steps, self.total_steps))
        self.position = Position()

    # ---- checkpoints ----

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu").contiguous() for n, p in zip(self.param_names, self.params)}

    def checkpoint(self, metrics: dict | None = None, *, is_final: bool = False) -> Checkpoint:
        buf = io.BytesIO()
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": _rng_state(), "position": asdict(self.position)}, buf)
        files = {ADAPTER_FILE: save_safetensors(self.adapter_state()), STATE_FILE: buf.getvalue()}
        return Checkpoint(self.position.step, self.position.epoch, files, metrics or {}, is_final)

    def restore(self, files: dict[str, bytes]) -> None:
        weights = load_safetensors(files[ADAPTER_FILE])
        missing = set(self.param_names) - set(weights)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} adapter tensors (e.g. {sorted(missing)[0]})")
        with torch.no_grad():
            for name, p in zip(self.param_names, self.params):
                p.copy_(weights[name].to(p.device, p.dtype))
        state = torch.load(io.BytesIO(files[STATE_FILE]), map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.position = Position(**state["position"])

    def adapter_files(self) -> dict[str, bytes]:
        """The output addon: PEFT's own files, loadable with PeftModel.from_pretrained."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            out = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        cfg = json.loads(out["adapter_config.json"])
        out["adapter_config.json"] = json.dumps(cfg, indent=2, sort_keys=True).encode()
        return {k: v for k, v in out.items() if k in ("adapter_config.json", ADAPTER_FILE)}

    # ---- the loop ----

    def _loss_sum(self, batch: PackedBatch) -> torch.Tensor:
        out = self.decoder(input_ids=batch.input_ids.to(self.device), position_ids=batch.position_ids.to(self.device),
                           packed_segments=batch.segments, use_cache=False)
        return chunked_lm_loss(out.last_hidden_state[0], self.lm_head, batch.targets.to(self.device),
                               self.config.loss_chunk_tokens)

    def _step(self, packs: list[list[int]]) -> StepMetrics:
        started = time.perf_counter()
        self.model.train()
        batches = [build_batch(self.train, p) for p in packs]
        n_targets = max(1, sum(b.num_targets for b in batches))
        loss_total = 0.0
        for batch in batches:
            loss = self._loss_sum(batch)
            (loss / n_targets).backward()
            loss_total += float(loss.detach())
        if not math.isfinite(loss_total):
            from fireplace.training.errors import TrainingError
            raise TrainingError(f"training diverged: the loss is not finite at step {self.position.step + 1}; "
                                "lower learningRate")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(b.num_tokens for b in batches)
        self.position.step += 1
        self.position.tokens += tokens
        elapsed = max(time.perf_counter() - started, 1e-9)
        return StepMetrics(self.position.step, self.position.epoch, loss_total / n_targets, lr, grad_norm, tokens,
                           tokens / elapsed)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.eval_set is None or len(self.eval_set) == 0:
            return None
        self.model.eval()
        packs = plan_epoch(self.eval_set.lengths(), seed=0, epoch=0, batch_tokens=self.config.batch_tokens,
                           batch_samples=self.config.batch_samples)
        total, count = 0.0, 0
        for pack in sorted(packs):
            batch = build_batch(self.eval_set, pack)
            total += float(self._loss_sum(batch))
            count += batch.num_targets
        return total / max(1, count)

    def run(self, hooks: TrainerHooks | None = None) -> RunResult:
        hooks = hooks or TrainerHooks()
        cfg, pos = self.config, self.position
        last_metrics: StepMetrics | None = None
        while pos.epoch < cfg.epochs:
            plan = self.plans[pos.epoch]
            while pos.pack < len(plan):
                packs = plan[pos.pack:pos.pack + cfg.grad_accum]
                metrics = self._step(packs)
                pos.pack += len(packs)
                last_metrics = metrics
                keep_going = hooks.on_step(metrics, self)
                at_end = pos.pack >= len(plan) and pos.epoch == cfg.epochs - 1
                if pos.step % self.interval == 0 and not at_end:
                    hooks.on_checkpoint(self.checkpoint(self._ckpt_metrics(metrics)), self)
                if not keep_going:
                    return RunResult(pos.step, stopped=True)
            eval_loss = self.evaluate()
            pos.epoch, pos.pack = pos.epoch + 1, 0
            hooks.on_epoch_end(pos.epoch - 1, eval_loss, self)
            if eval_loss is not None:
                pos.eval_losses.append(eval_loss)
                if last_metrics is not None:
                    last_metrics.eval_loss = eval_loss
                improved = pos.best_eval is None or eval_loss < pos.best_eval
                pos.best_eval = eval_loss if improved else pos.best_eval
                if cfg.early_stop and not improved and pos.epoch < cfg.epochs:
                    return RunResult(pos.step, early_stopped=True)
        return RunResult(pos.step)

    def _ckpt_metrics(self, m: StepMetrics) -> dict:
        out = {"trainLoss": m.train_loss, "learningRate": m.learning_rate}
        if self.position.eval_losses:
            out["evalLoss"] = self.position.eval_losses[-1]
        return out
