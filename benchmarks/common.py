"""Shared benchmark helpers: XLA's FLOP count, the device's measured matmul peak, timing. The peer model (diffusers'
Flax UNet at about the kit model's FLOPs) is found by `peer` in benchmarks/sampling.py."""
from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from iimagen.model.unet import xla_flops  # noqa: F401  (re-exported for the benchmarks)


def timeit(fn, *args, warmup: int = 2, min_time: float = 2.0, max_iters: int = 200) -> float:
    """Median seconds per call of `fn(*args)` (outputs blocked on), after `warmup` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times, t_end = [], time.perf_counter() + min_time
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < max_iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def matmul_peak() -> dict:
    """The device's measured matmul throughput: bf16 on an accelerator (8192^3), float32 on CPU (1024^3)."""
    accel = jax.default_backend() != "cpu"
    n, dtype = (8192, jnp.bfloat16) if accel else (1024, jnp.float32)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    s = timeit(f, a, a, min_time=1.0)
    return {"peak_tflops": 2 * n ** 3 / s / 1e12, "peak_dtype": jnp.dtype(dtype).name, "peak_n": n}


def device_name() -> str:
    d = jax.devices()[0]
    return f"{jax.device_count()} x {d.device_kind} ({d.platform})"


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress to stderr with the seconds since start (compiles on an accelerator can take minutes)."""
    print(f"[{time.perf_counter() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
