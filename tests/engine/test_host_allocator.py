"""host_allocator.tune(): with it, big buffers freed and allocated again are not mapped anew.

Each case runs in its own interpreter (malloc settings are per process and cannot be undone):
sixteen times over, it allocates and frees tensors of 24-48 MB in an overlapping pattern (like a
forward's activations; 40 and 48 MB are above glibc's largest dynamic mmap threshold, 32 MB)
and counts the minor page faults of the last ten rounds: a fresh mapping faults in every page
it touches, memory the heap kept does not (the first rounds grow the heap to its peak).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                                reason="the settings are glibc's")

PROBE = """
import json, resource, torch
from fireplace.engine import host_allocator
tuned = host_allocator.tune()
again = host_allocator.tune()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counted = 0
for i in range(16):
    before = faults()
    x = torch.ones(10 << 20)  # 40 MB
    y = torch.ones(6 << 20)
    del x
    z = torch.ones(12 << 20)
    del y, z
    counted += faults() - before if i >= 6 else 0
print(json.dumps({"tuned": tuned, "again": again, "faults": counted}))
"""


def probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_process_reuses_big_buffers():
    tuned = probe(FIREPLACE_MALLOC_TUNING="1")
    default = probe(FIREPLACE_MALLOC_TUNING="0")
    assert tuned["tuned"] and tuned["again"]
    assert not default["tuned"]
    pages = (48 << 20) // 4096  # of the largest buffer
    assert default["faults"] > 5 * pages  # fresh mappings every round: glibc's default
    assert tuned["faults"] < pages // 4  # the heap keeps them
