"""What a model's uploaded files must look like, checked without loading any weights.

    base model (HF_BASE_MODEL): config.json + at least one *.safetensors; a
        model.safetensors.index.json, if present, may name only uploaded shards
    addon (HF_PEFT_ADDON):      adapter_config.json (r in 4..64) + adapter_model.safetensors
    never:                      pickle-based weights (*.bin, *.pt, *.pth, *.pkl, *.ckpt, ...)

A safetensors file is `<u64 little-endian header length N><N bytes of JSON header><data>`;
the header maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets into
the data section). We read only the header, check it against the file size, and count
parameters from the shapes. Every error names the file and what is wrong.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from fireplace.errors import InvalidArgument
from fireplace.storage import BlobStore

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
MAX_HEADER_BYTES = 16 << 20     # real headers are KBs to a few MB (one entry per tensor)
MAX_TENSORS = 100_000
MAX_JSON_BYTES = 16 << 20
MIN_LORA_RANK, MAX_LORA_RANK = 4, 64
MAX_CONTEXT_LENGTH = 1 << 30    # as Model.contextLength allows
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass
class CheckResult:
    """What validation learned: details to store on the model, and warnings to return."""
    parameter_count: int = 0
    model_type: str | None = None
    context_length: int | None = None
    lora_rank: int | None = None
    target_modules: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_pickle(filename: str) -> bool:
    return filename.lower().endswith(PICKLE_SUFFIXES)


def refuse_pickles(filenames) -> None:
    bad = sorted(f for f in filenames if is_pickle(f))
    if bad:
        raise InvalidArgument(f"{bad[0]}: pickle-based weight files are refused (loading them can run "
                              "arbitrary code); convert the weights to safetensors"
                              + (f" (also refused: {', '.join(bad[1:10])})" if len(bad) > 1 else ""))


def read_json(blobs: BlobStore, key: str, filename: str) -> dict:
    if blobs.size(key) > MAX_JSON_BYTES:
        raise InvalidArgument(f"{filename}: larger than {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(blobs.read_bytes(key))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{filename}: not valid JSON ({exc})") from None
    except RecursionError:   # the decoder recurses per level: a deeply nested value exhausts the stack
        raise InvalidArgument(f"{filename}: nested too deeply to be a model's configuration") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{filename}: expected a JSON object")
    return data


def safetensors_header(blobs: BlobStore, key: str, filename: str) -> dict[str, dict]:
    """The tensor table of a safetensors file (without __metadata__), checked for consistency."""
    total = blobs.size(key)
    with blobs.open(key) as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InvalidArgument(f"{filename}: not a safetensors file (shorter than 8 bytes)")
        (length,) = struct.unpack("<Q", prefix)
        if length == 0 or length > min(MAX_HEADER_BYTES, total - 8):
            raise InvalidArgument(f"{filename}: not a safetensors file (header length {length} does not "
                                  f"fit a file of {total} bytes)")
        raw = bytearray()
        while len(raw) < length:   # streamed: never one read of an attacker-chosen size
            chunk = f.read(min(1 << 20, length - len(raw)))
            if not chunk:
                raise InvalidArgument(f"{filename}: not a safetensors file (header cut short)")
            raw += chunk
    try:
        header = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidArgument(f"{filename}: not a safetensors file (header is not JSON, or nested too "
                              "deeply)") from None
    if not isinstance(header, dict):
        raise InvalidArgument(f"{filename}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise InvalidArgument(f"{filename}: more than {MAX_TENSORS} tensors")
    data_size = total - 8 - length
    for name, info in header.items():
        _check_tensor(filename, name, info, data_size)
    return header


def _check_tensor(filename: str, name: str, info: Any, data_size: int) -> None:
    where = f"{filename}: tensor {name[:200]!r}"
    if not isinstance(info, dict):
        raise InvalidArgument(f"{where}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise InvalidArgument(f"{where}: unknown dtype {str(dtype)[:20]!r}")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < (1 << 40) for d in shape)):
        raise InvalidArgument(f"{where}: shape must be a list of at most 8 non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise InvalidArgument(f"{where}: data_offsets {str(offsets)[:60]} lie outside the file")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise InvalidArgument(f"{where}: {offsets[1] - offsets[0]} bytes do not match shape {shape} of {dtype}")


def count_parameters(header: dict[str, dict]) -> int:
    return sum(math.prod(info["shape"]) for info in header.values())


def check_base_model(blobs: BlobStore, keys: dict[str, str]) -> CheckResult:
    """keys: uploaded filename -> blob key."""
    refuse_pickles(keys)
    result = CheckResult()
    if "config.json" not in keys:
        raise InvalidArgument("config.json: missing (a base model needs config.json and *.safetensors weights)")
    config = read_json(blobs, keys["config.json"], "config.json")
    result.model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    if not result.model_type:
        raise InvalidArgument("config.json: missing 'model_type' (e.g. \"llama\")")
    if len(result.model_type) > 128:
        raise InvalidArgument("config.json: 'model_type' is longer than 128 characters")
    if not config.get("architectures"):
        result.warnings.append("config.json: no 'architectures' listed")
    if config.get("auto_map"):
        result.warnings.append("config.json: 'auto_map' names custom code, which Fireplace never runs")
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and not isinstance(positions, bool):
        if 0 < positions <= MAX_CONTEXT_LENGTH:
            result.context_length = positions
        else:
            result.warnings.append(f"config.json: max_position_embeddings {str(positions)[:24]} is outside "
                                   f"1..{MAX_CONTEXT_LENGTH}; ignored")
    shards = sorted(f for f in keys if f.endswith(".safetensors"))
    if not shards:
        raise InvalidArgument("*.safetensors: no weights uploaded (a base model needs at least one "
                              "*.safetensors file next to config.json)")
    if "model.safetensors.index.json" in keys:
        _check_index(blobs, keys, set(shards))
    for shard in shards:
        result.parameter_count += count_parameters(safetensors_header(blobs, keys[shard], shard))
    return result


def _check_index(blobs: BlobStore, keys: dict[str, str], shards: set[str]) -> None:
    name = "model.safetensors.index.json"
    index = read_json(blobs, keys[name], name)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidArgument(f"{name}: missing 'weight_map'")
    missing = sorted({str(v) for v in weight_map.values()} - shards)
    if missing:
        raise InvalidArgument(f"{name}: names shard {missing[0][:200]!r}, which was not uploaded")


def check_addon(blobs: BlobStore, keys: dict[str, str], *, peft_r: int | None,
                peft_target_modules: list[str]) -> CheckResult:
    refuse_pickles(keys)
    result = CheckResult()
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if required not in keys:
            raise InvalidArgument(f"{required}: missing (a LoRA addon needs adapter_config.json and "
                                  "adapter_model.safetensors)")
    config = read_json(blobs, keys["adapter_config.json"], "adapter_config.json")
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise InvalidArgument(f"adapter_config.json: peft_type {str(peft_type)[:40]!r} is not supported (only LORA)")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or not MIN_LORA_RANK <= r <= MAX_LORA_RANK:
        raise InvalidArgument(f"adapter_config.json: r must be an integer from {MIN_LORA_RANK} to "
                              f"{MAX_LORA_RANK}, got {str(r)[:40]}")
    if peft_r is not None and peft_r != r:
        raise InvalidArgument(f"adapter_config.json: r is {r} but the model's peftDetails.r is {peft_r}")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else [str(t) for t in targets]
    if peft_target_modules and set(peft_target_modules) != set(targets):
        raise InvalidArgument(f"adapter_config.json: target_modules {sorted(targets)} differ from the model's "
                              f"peftDetails.targetModules {sorted(peft_target_modules)}")
    header = safetensors_header(blobs, keys["adapter_model.safetensors"], "adapter_model.safetensors")
    if not header:
        raise InvalidArgument("adapter_model.safetensors: holds no tensors")
    for name, info in header.items():
        shape = info["shape"]
        # PEFT layout: lora_A [r, in_features], lora_B [out_features, r]
        if ("lora_A" in name or "lora_B" in name) and len(shape) != 2:
            raise InvalidArgument(f"adapter_model.safetensors: tensor {name[:200]!r} has shape {shape}; "
                                  f"LoRA matrices are 2-D ([r, in] for lora_A, [out, r] for lora_B)")
        rank = shape[0] if "lora_A" in name else shape[-1] if "lora_B" in name else None
        if rank is not None and rank != r:
            raise InvalidArgument(f"adapter_model.safetensors: tensor {name[:200]!r} has shape {shape}, "
                                  f"which does not match r={r} from adapter_config.json")
    result.lora_rank, result.target_modules = r, targets
    result.parameter_count = count_parameters(header)
    if not config.get("base_model_name_or_path"):
        result.warnings.append("adapter_config.json: no base_model_name_or_path")
    return result
