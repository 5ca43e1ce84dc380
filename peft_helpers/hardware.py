"""How fast this machine multiplies matrices, and what its CPU is: the line `demo` prints first (so that its time
can be compared between machines) and the benchmarks' hardware line."""

from __future__ import annotations

import time


def use_threads(threads: int | None) -> None:
    """torch.set_num_threads(threads), but only where it changes the number (None: leave it): the call also pins
    MKL's threading, which made PyTorch's CPU attention kernel 1.6x slower on a 2-core AMD EPYC for the rest of the
    process, and `run` and the notebook never call it."""
    import torch

    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


def matmul_gflops(threads: int | None = None, n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """The CPU's matrix-product rate in GFLOP/s (fp32 unless `dtype` says) with `threads` threads (None: torch's
    current number; use_threads sets it): the best of three timings of `repeats` n x n products (2 n^3 FLOPs
    each)."""
    import torch

    use_threads(threads)
    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b  # warm-up: thread pool, caches, the library's kernel choice
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best / 1e9


def cpu_instructions() -> str:
    """The CPU's widest vector instructions as torch uses them, in a few words for the demo's rate line and the
    benchmarks' hardware line: ATen's kernel level (torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512",
    "NO AVX", "SVE256", ...), plus "with bf16 units" where cpu_has_bf16 finds them. Two hosts of one name ("AMD
    EPYC") ran this project's benchmarks with AVX-512 and bf16 units on one day and AVX2 alone on another, so the
    name alone does not say which machine a number came from. (Public since torch 2.0; the project needs 2.4.)"""
    import torch

    level = torch.backends.cpu.get_cpu_capability()
    return f"{level} with bf16 units" if cpu_has_bf16() else level


def cpu_description() -> str:
    """The CPU's name and vector instructions, e.g. "AMD EPYC; AVX2", for the lines that say which machine a number
    came from (bench.py's hardware line, the executed notebook's stamp): the name from /proc/cpuinfo where Linux has
    it (platform.processor() is empty there), else platform.processor()."""
    import os
    import platform

    name = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    return f"{name or 'unknown CPU'}; {cpu_instructions()}"


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16 units: Xeon Sapphire Rapids and
    later, AMD Zen 4 and later), the only CPUs where bf16 mixed precision is faster rather than emulated. Asks
    torch's own CPU checks (private, present since torch 2.3); False where they are missing."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)
