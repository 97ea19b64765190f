"""Shared benchmark helpers: XLA's FLOP count, the device's measured matmul peak, timing, and the peer model
(diffusers' Flax UNet at about the kit model's FLOPs)."""
from __future__ import annotations

import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np


def xla_flops(compiled) -> float:
    """FLOPs of a lowered or compiled computation from XLA's own cost analysis (a dict, or a list of dicts)."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", float("nan")))


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


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# The peer: diffusers' FlaxUNet2DConditionModel (diffusers 0.39.x), widths chosen to match the kit's FLOPs
# ---------------------------------------------------------------------------------------------------------------------
def _quiet_diffusers():
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", module="diffusers")


def peer_unet(width: int, resolution: int, cross_dim: int, dtype=jnp.float32):
    """A 3-level diffusers Flax UNet with cross-attention at the two lower levels, `width` channels at the top."""
    _quiet_diffusers()
    from diffusers import FlaxUNet2DConditionModel

    return FlaxUNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(width, 2 * width, 2 * width), layers_per_block=2, attention_head_dim=8,
        cross_attention_dim=cross_dim, dtype=dtype)


def peer_forward_flops(width, resolution, cross_dim, text_len, batch=1) -> float:
    unet = peer_unet(width, resolution, cross_dim)
    x = jnp.zeros((batch, 3, resolution, resolution))
    ctx = jnp.zeros((batch, text_len, cross_dim))
    params = jax.eval_shape(lambda: unet.init(jax.random.key(0), x, jnp.zeros((batch,)), ctx))["params"]
    f = jax.jit(lambda p, x, c: unet.apply({"params": p}, x, jnp.ones((batch,)), c).sample)
    return xla_flops(f.lower(params, x, ctx)) / batch  # the lowered HLO's count: no backend compile needed


def matched_peer_width(target_flops: float, resolution: int, cross_dim: int, text_len: int) -> tuple[int, float]:
    """The peer width (a multiple of 32) whose forward FLOPs per image are nearest the kit model's."""
    best = None
    for w in range(32, 1025, 32):
        f = peer_forward_flops(w, resolution, cross_dim, text_len)
        if best is None or abs(np.log(f / target_flops)) < abs(np.log(best[1] / target_flops)):
            best = (w, f)
        if f > target_flops * 1.5:
            break
    return best
