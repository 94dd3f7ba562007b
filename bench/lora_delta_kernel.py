"""Batched multi-LoRA delta: our C kernel vs the torch paths of LoRAStack, per call (one projection).

SmolLM2-135M projections (K -> N): q 576->960, k/v 576->192, o 576->576, gate/up 576->1536,
down 1536->576; S=8 adapter slots of rank R=8, as in LoRAStack (a [S, R, K], b [S, R, N]).

  decode   T=64 tokens, each of a random slot
  prefill  T=2048 tokens in runs of ~256 tokens of one slot

  torch dense  LoRAStack._apply_dense: F.linear(x, a_cat); h.view(T, U, R).mul_(mask);
               y.addmm_(h, b_cat), on torch's threads (what the engine uses in decode)
  torch runs   LoRAStack.apply's per-run path: F.linear + addmm per run (the engine's choice
               for prefill-length runs)
  kernel       fireplace.engine.kernels.lora_delta.lora_delta_unchecked_, 1 thread and
               torch's thread count

Prints median and best microseconds per call and each method's speedup over torch dense (medians),
then the Python-side cost of the wrapper: lora_delta_ and lora_delta_unchecked_ on a batch of
base tokens only (the kernel returns after its checks), and the bare ctypes call.

    .venv/bin/python bench/lora_delta_kernel.py [--repeats 200] [--slots 8] [--rank 8] [--threads N]

On a machine shared with other work, threaded timings (torch's and the kernel's) suffer most:
a thread of a parallel region that loses its core holds up the others. --threads 1 compares
single-thread times only.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fireplace.engine.kernels import lora_delta

SHAPES = {"q": (576, 960), "k,v": (576, 192), "o": (576, 576), "gate,up": (576, 1536), "down": (1536, 576)}


def decode_slots(num_tokens: int, num_slots: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, num_slots, (num_tokens,), generator=g)


def prefill_slots(num_tokens: int, num_slots: int, g: torch.Generator, run: int = 256) -> torch.Tensor:
    """Runs of run +- 25% tokens, slots in turn."""
    slots, slot = [], 0
    while len(slots) < num_tokens:
        n = int(torch.randint(run * 3 // 4, run * 5 // 4 + 1, (1,), generator=g))
        slots += [slot % num_slots] * n
        slot += 1
    return torch.tensor(slots[:num_tokens])


def make_case(num_tokens: int, k: int, n: int, slots: torch.Tensor, num_slots: int, rank: int, g):
    x = torch.randn(num_tokens, k, generator=g)
    a = torch.randn(num_slots, rank, k, generator=g)
    b = torch.randn(num_slots, rank, n, generator=g) * 1e-3  # small: y grows slowly over repeats
    y = torch.randn(num_tokens, n, generator=g)
    return x, a, b, y


def methods_for(x, a, b, y, slots: torch.Tensor, rank: int, kernel_threads: list[int]):
    num_tokens, num_slots = x.shape[0], a.shape[0]
    active = torch.arange(num_slots)  # every slot active, all of rank R: a_cat/b_cat are plain views
    a_cat, b_cat = a.view(-1, a.shape[2]), b.view(-1, b.shape[2])
    mask = (slots[:, None] == active[None, :]).float().unsqueeze(-1)  # [T, U, 1]
    change = torch.nonzero(slots[1:] != slots[:-1]).flatten() + 1
    starts = [0, *change.tolist()]
    runs = list(zip(starts, [*starts[1:], num_tokens], slots[starts].tolist()))
    ranks = torch.full((num_slots,), rank, dtype=torch.int32)
    slots32 = slots.to(torch.int32)

    def dense():
        h = F.linear(x, a_cat)
        h.view(num_tokens, num_slots, rank).mul_(mask)
        y.addmm_(h, b_cat)

    def per_run():
        for start, end, s in runs:
            y[start:end].addmm_(F.linear(x[start:end], a[s]), b[s])

    methods = {f"torch dense ({torch.get_num_threads()} thr)": dense}
    if len(runs) <= num_tokens // 16:  # the engine's per-run path only for long runs
        methods[f"torch runs ({torch.get_num_threads()} thr)"] = per_run
    for n in kernel_threads:
        methods[f"kernel, {n} thr"] = (
            lambda n=n: lora_delta.lora_delta_unchecked_(x, a, b, ranks, slots32, y, n))
    return methods


def check_agrees(x, a, b, y, slots, rank, methods) -> None:
    """Every method adds the same delta as torch dense (y restored after each)."""
    y0 = y.clone()
    deltas = []
    for fn in methods.values():
        fn()
        deltas.append(y - y0)
        y.copy_(y0)
    for name, d in zip(methods, deltas):
        err = (d - deltas[0]).abs().max().item() / max(deltas[0].abs().max().item(), 1e-30)
        assert err < 1e-4, f"{name} disagrees with torch dense: relative error {err:.2e}"


def time_methods(methods, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each round, rounds interleaved so that noise hits every method alike."""
    for fn in methods.values():
        for _ in range(3):  # warm-up
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def wrapper_overhead(repeats: int) -> None:
    num_slots, rank, k, n, num_tokens = 8, 8, 576, 192, 64
    x, y = torch.randn(num_tokens, k), torch.randn(num_tokens, n)
    a, b = torch.randn(num_slots, rank, k), torch.randn(num_slots, rank, n)
    ranks = torch.full((num_slots,), rank, dtype=torch.int32)
    slots = torch.full((num_tokens,), -1, dtype=torch.int32)  # base tokens only: no kernel work
    raw_args = (x.data_ptr(), k, a.data_ptr(), b.data_ptr(), ranks.data_ptr(), slots.data_ptr(), y.data_ptr(), n,
                num_tokens, k, n, num_slots, rank, 1)
    fn = lora_delta._fn
    calls = {"lora_delta_": lambda: lora_delta.lora_delta_(x, a, b, ranks, slots, y),
             "lora_delta_unchecked_": lambda: lora_delta.lora_delta_unchecked_(x, a, b, ranks, slots, y),
             "bare ctypes call": lambda: fn(*raw_args)}
    print("\nPython-side cost per call (T=64 base tokens, no delta to add):")
    for name, call in calls.items():
        ts = time_methods({name: lambda: [call() for _ in range(100)]}, repeats)[name]
        print(f"  {name:<24}{statistics.median(ts) / 100 * 1e6:>7.2f} us median, {min(ts) / 100 * 1e6:.2f} best")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200, help="rounds at T=64; T=2048 runs a tenth")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not lora_delta.available():
        raise SystemExit("LoRA delta kernel unavailable (no C compiler?)")
    threads = sorted({1, torch.get_num_threads()})
    g = torch.Generator().manual_seed(0)
    print(f"S={args.slots} R={args.rank}, torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    for label, num_tokens, make_slots, repeats in (
            ("decode", 64, decode_slots, args.repeats),
            ("prefill", 2048, prefill_slots, max(args.repeats // 10, 5))):
        slots = make_slots(num_tokens, args.slots, g)
        print(f"\n{label}: T={num_tokens}, {int((slots[1:] != slots[:-1]).sum()) + 1} runs; "
              f"us per call: median / best (speedup over torch dense, medians)")
        header = None
        for proj, (k, n) in SHAPES.items():
            x, a, b, y = make_case(num_tokens, k, n, slots, args.slots, args.rank, g)
            methods = methods_for(x, a, b, y, slots, args.rank, threads)
            check_agrees(x, a, b, y, slots, args.rank, methods)
            times = time_methods(methods, repeats)
            if header is None:
                header = f"{'proj':<9}{'K->N':>10}" + "".join(f"{name:>30}" for name in methods)
                print(header)
            medians = [statistics.median(ts) for ts in times.values()]
            cells = "".join(f"{med * 1e6:>11.1f} /{min(ts) * 1e6:>8.1f} ({medians[0] / med:>5.1f}x)"
                            for med, ts in zip(medians, times.values()))
            print(f"{proj:<9}{f'{k}->{n}':>10}{cells}")
    wrapper_overhead(max(args.repeats // 20, 5))


if __name__ == "__main__":
    main()
