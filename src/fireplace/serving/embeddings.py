"""Sentence embeddings from a sentence-transformers style model directory, as /v1/embeddings serves them.

    embedder = Embedder(ensure_minilm())
    batch = embedder.encode(["first text", "second"])      # EmbeddingBatch
    batch.vectors          float32 [N, D], L2-normalized rows (for MiniLM: D = 384)
    batch.num_tokens       [N] tokens each input used (special tokens included) -> usage
    embedder.embed(texts)  -> list[list[float]]
    encode_embedding(vector, "float" | "base64")   OpenAI's encodings; base64 = little-endian float32

What sentence-transformers computes for such a model, and so what this computes: the tokenizer
(truncation at `max_seq_length` of sentence_bert_config.json), the transformer's last hidden
state, the pooling of `pooling_config.json` (or `1_Pooling/config.json`: mean over non-padding
tokens, or the CLS token), then L2 normalization when modules.json lists a Normalize module.

Limits (InvalidRequestError, param "input"): 1..MAX_INPUTS inputs, each a non-empty string of at
most MAX_INPUT_CHARS; an input longer than max_seq_length tokens is an error, or is cut to it with
truncate=True (sentence-transformers always cuts). Inputs run in length-sorted batches of
`batch_size` so padding stays small; the output keeps the input order.
"""
from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fireplace.engine.errors import InvalidRequestError

__all__ = ["ENCODING_FORMATS", "MAX_INPUTS", "MAX_INPUT_CHARS", "EmbeddingBatch", "Embedder", "decode_base64",
           "encode_embedding"]

MAX_INPUTS = 2048            # OpenAI's per-request limit
MAX_INPUT_CHARS = 64 << 10   # before tokenizing: bounds tokenizer work on one string
ENCODING_FORMATS = ("float", "base64")
_POOLING_MODES = ("mean", "cls")  # the ones implemented; sentence-transformers also has max, mean_sqrt_len
_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                 "max": "pooling_mode_max_tokens", "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}
_PARAM = "input"


@dataclass
class EmbeddingBatch:
    vectors: torch.Tensor   # float32 [N, D], input order
    num_tokens: list[int]   # [N]

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


@dataclass(frozen=True)
class EmbeddingSpec:
    """How a directory's model turns hidden states into one vector."""

    max_seq_length: int
    pooling: str          # "mean" | "cls"
    normalize: bool
    do_lower_case: bool

    @classmethod
    def read(cls, model_dir: Path, model_max_length: int) -> "EmbeddingSpec":
        st_config = _read_json(model_dir / "sentence_bert_config.json") or {}
        pooling_config = (_read_json(model_dir / "pooling_config.json")
                          or _read_json(model_dir / "1_Pooling" / "config.json") or {"pooling_mode_mean_tokens": True})
        modes = [mode for mode, key in _POOLING_KEYS.items() if pooling_config.get(key)]
        if len(modes) != 1 or modes[0] not in _POOLING_MODES:
            raise ValueError(f"{model_dir}: pooling {modes or 'none'} is not supported (one of {_POOLING_MODES})")
        modules = _read_json(model_dir / "modules.json") or []
        normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
        max_len = int(st_config.get("max_seq_length") or model_max_length)
        return cls(min(max_len, model_max_length), modes[0], normalize, bool(st_config.get("do_lower_case", False)))


class Embedder:
    """One embedding model in memory; encode() may be called from several threads."""

    def __init__(self, model_dir: str | Path, *, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModel.from_pretrained(str(self.model_dir), dtype=torch.float32).to(self.device).eval()
        positions = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.spec = EmbeddingSpec.read(self.model_dir, positions)
        self.dimensions = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # one forward at a time: CPU threads are shared anyway

    @property
    def max_input_tokens(self) -> int:
        return self.spec.max_seq_length

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text would use untruncated (special tokens included)."""
        return [len(ids) for ids in self.tokenizer(self._prepare(texts), add_special_tokens=True)["input_ids"]]

    def embed(self, texts: list[str], *, truncate: bool = False) -> list[list[float]]:
        return self.encode(texts, truncate=truncate).vectors.tolist()

    @torch.inference_mode()
    def encode(self, texts: list[str], *, truncate: bool = False) -> EmbeddingBatch:
        texts = self._prepare(_checked_inputs(texts))
        limit = self.spec.max_seq_length
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        too_long = [(i, len(ids)) for i, ids in enumerate(full) if len(ids) > limit]
        if too_long and not truncate:
            i, n = too_long[0]
            raise InvalidRequestError(
                f"input[{i}] has {n} tokens; this model embeds at most {limit} tokens per input. "
                f"Shorten it or ask for truncation.", _PARAM)
        num_tokens = [min(len(ids), limit) for ids in full]
        vectors = torch.empty(len(texts), self.dimensions, dtype=torch.float32)
        order = sorted(range(len(texts)), key=lambda i: num_tokens[i])
        with self._lock:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                vectors[chunk] = self._forward([texts[i] for i in chunk]).cpu()
        return EmbeddingBatch(vectors, num_tokens)

    def _forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.spec.max_seq_length,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state  # [B, T, D]
        if self.spec.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float()

    def _prepare(self, texts: list[str]) -> list[str]:
        return [t.lower() for t in texts] if self.spec.do_lower_case else list(texts)


def _checked_inputs(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise InvalidRequestError("input must be a non-empty string or a non-empty array of strings", _PARAM)
    if len(texts) > MAX_INPUTS:
        raise InvalidRequestError(f"input holds {len(texts)} items; the limit is {MAX_INPUTS}", _PARAM)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidRequestError(f"input[{i}] must be a string", _PARAM)
        if not text:
            raise InvalidRequestError(f"input[{i}] is empty", _PARAM)
        if len(text) > MAX_INPUT_CHARS:
            raise InvalidRequestError(f"input[{i}] has {len(text)} characters; the limit is {MAX_INPUT_CHARS}",
                                      _PARAM)
    return list(texts)


def encode_embedding(vector, encoding_format: str = "float") -> list[float] | str:
    """One vector ([D] tensor, array or list) as OpenAI returns it: a list of floats, or base64
    of its little-endian float32 bytes."""
    if encoding_format == "float":
        return vector.tolist() if hasattr(vector, "tolist") else [float(x) for x in vector]
    if encoding_format == "base64":
        array = np.asarray(vector.cpu() if isinstance(vector, torch.Tensor) else vector, dtype="<f4")
        return base64.b64encode(array.tobytes()).decode("ascii")
    raise InvalidRequestError(f"encoding_format must be one of {', '.join(ENCODING_FORMATS)}, "
                              f"got {str(encoding_format)[:40]!r}", "encoding_format")


def decode_base64(data: str) -> list[float]:
    """Inverse of encode_embedding(..., "base64")."""
    return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float64).tolist()


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None
