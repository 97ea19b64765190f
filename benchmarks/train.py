"""Training speed: images/s, TFLOP/s and utilisation of the kit's train step, and of the peer in the same run.

    python benchmarks/train.py                       # tiny on CPU (float32)
    python benchmarks/train.py --config small --batch 64 --dtype bfloat16    # on an accelerator

The kit's step is exactly `iimagen.train`'s (all K context slots used; a second case runs it on a real stage-2
batch's slots, of which the step encodes only the used ones): the full Instruct-Imagen forward (text encoder, context encoder over K
slots, UNet with text and context cross-attention), the v-prediction loss, Adafactor, EMA. The peer is diffusers'
`FlaxUNet2DConditionModel` (0.39.x) at about the kit model's forward FLOPs (found by benchmarks/sampling.py's
search), trained with the same loss and optimizer (plain text conditioning: it has no context branch). FLOPs are XLA's own count of the compiled step; utilisation is
against the device's measured matmul peak (bf16 on an accelerator, float32 on CPU). Batches are random arrays of the
right shapes, so the input pipeline is not measured here (see benchmarks/data.py). One JSON line per case, with the
seconds XLA took to compile the step (`compile_s`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import device_name, emit, log, matmul_peak, timeit, xla_flops


def fake_batch(cfg, batch, rng=0):
    r = np.random.default_rng(rng)
    R, K = cfg.resolution, cfg.K
    ids = lambda *s: r.integers(1, 500, s).astype(np.int32)
    return {"image": r.uniform(-1, 1, (batch, R, R, 3)).astype(np.float32), "text_ids": ids(batch, cfg.text_len),
            "ctx_image": r.uniform(-1, 1, (batch, K, R, R, 3)).astype(np.float32),
            "ctx_ids": ids(batch, K, cfg.ctx_text_len), "ctx_mask": np.ones((batch, K), bool),
            "task_id": np.zeros((batch,), np.int32)}


def stage2_context(cfg, batch):
    """The context-slot mask and context texts of the first stage-2 batch the trainer would draw (seed 0): 1.2 of
    K = 3 slots used on average and 3-6 tokens per text, which the train step skips (`train.context_capacity`,
    `train.context_text_len`)."""
    from iimagen.data import Loader

    loader = Loader(stage=2, batch_size=batch, resolution=cfg.resolution, seed=0, K=cfg.K, workers=0)
    b = next(iter(loader))[1]
    loader.close()
    return b["ctx_mask"], b["ctx_ids"]


def kit_case(config, batch, dtype, mixture=False):
    from iimagen import train as T
    from iimagen.configs import get_config
    from iimagen.model import flops_per_image
    from iimagen.tasks import TASK_NAMES

    cfg = get_config(config, dtype=dtype)
    tc = T.TrainConfig(config=config, stage=2, batch_size=batch).resolved()
    model = T.create_model(cfg, 0)  # initialisers compiled as one program (eager init is slow on a GPU host)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = T.make_optimizer(tc)
    mesh = T.make_mesh()
    state = T.init_state(params, tx, mesh, fsdp=False)
    # the loop's program, without donation: every timed call starts from the same state
    step = T.jit_train_step(T.make_train_step(graphdef, tx, tc, len(TASK_NAMES)), state, mesh, donate=False)
    local, capacity = fake_batch(cfg, batch), None
    if mixture:
        local["ctx_mask"], ids = stage2_context(cfg, batch)
        local["ctx_ids"] = ids[..., :T.context_text_len(ids, cfg.ctx_text_len)]
        capacity = T.context_capacity(local["ctx_mask"], batch, cfg.K)
    b = T.shard_batch(mesh, local)
    t = time.perf_counter()
    step = step.lower(state, b, capacity).compile()  # timed as compiled: calling the jit again would compile it twice
    compile_s = time.perf_counter() - t
    log(f"kit step compiled ({config}, batch {batch}, context capacity {capacity}) in {compile_s:.0f} s")
    flops = xla_flops(step)
    s = timeit(lambda st: step(st, b)[1]["loss"], state)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    fwd = flops_per_image(cfg)  # the forward pass alone: what the peer is matched to
    name = f"iimagen {config}" + (f", a stage-2 batch's slots ({int(local['ctx_mask'].sum())} of "
                                  f"{batch * cfg.K} used, {capacity or batch * cfg.K} encoded; context texts "
                                  f"{local['ctx_ids'].shape[-1]} tokens)" if mixture else "")
    return {"model": name, "params_M": n_params / 1e6, "fwd_gflops_per_image": fwd / 1e9,
            "step_s": s, "images_per_s": batch / s, "tflops": flops / s / 1e12, "step_gflops": flops / 1e9,
            "compile_s": compile_s, "_cfg": cfg}


def peer_case(cfg, batch, dtype, target_fwd_flops):
    """The peer found by `benchmarks/sampling.py`'s FLOP-matching search, trained with the kit's loss and optimizer."""
    from sampling import peer

    variant, fwd, unet, _ = peer(cfg, target_fwd_flops)
    log(f"peer found: {variant}")
    unet = unet.clone(dtype=jnp.dtype(dtype))
    size, chans = variant["sample_size"], variant["in_channels"]  # pixel-unshuffled input when the search chose it
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, chans, size, size)), jnp.float32)
    ctx = jnp.asarray(np.random.default_rng(1).normal(size=(batch, cfg.text_len, cfg.text_width)), jnp.float32)
    params = unet.init(jax.random.key(0), x, jnp.zeros((batch,)), ctx)["params"]
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adafactor(1e-4, momentum=0.9,
                                                                     multiply_by_parameter_scale=False))

    def step(state, key):
        params, opt = state

        def loss_fn(p):
            t = jax.random.uniform(key, (batch,))
            n = jax.random.normal(key, x.shape)
            a, s = jnp.cos(t * jnp.pi / 2)[:, None, None, None], jnp.sin(t * jnp.pi / 2)[:, None, None, None]
            v = unet.apply({"params": p}, a * x + s * n, t * 999, ctx).sample
            return jnp.mean((v.astype(jnp.float32) - (a * n - s * x)) ** 2)

        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt = tx.update(g, opt, params)
        return (optax.apply_updates(params, upd), opt), loss

    state = (params, tx.init(params))
    key = jax.random.key(0)
    t = time.perf_counter()
    jstep = jax.jit(step).lower(state, key).compile()
    compile_s = time.perf_counter() - t
    log(f"peer step compiled in {compile_s:.0f} s")
    flops = xla_flops(jstep)
    s = timeit(lambda st: jstep(st, key)[1], state)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    return {"model": f"diffusers FlaxUNet2DConditionModel {variant}", "params_M": n_params / 1e6,
            "fwd_gflops_per_image": fwd / 1e9, "step_s": s, "images_per_s": batch / s, "tflops": flops / s / 1e12,
            "step_gflops": flops / 1e9, "compile_s": compile_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    accel = jax.default_backend() != "cpu"
    p.add_argument("--config", default="small" if accel else "tiny")
    p.add_argument("--batch", type=int, default=64 if accel else 8)
    p.add_argument("--dtype", default="bfloat16" if accel else "float32")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--no-mixture", action="store_true",
                   help="skip the case with a real stage-2 batch's context slots (empty ones skipped)")
    a = p.parse_args(argv)
    peak = matmul_peak()
    log(f"matmul peak {peak['peak_tflops']:.3g} TFLOP/s")
    common = {"bench": "train", "device": device_name(), "config": a.config, "batch": a.batch, "dtype": a.dtype,
              **{k: round(v, 2) if isinstance(v, float) else v for k, v in peak.items()}}
    kit = kit_case(a.config, a.batch, a.dtype)
    cfg, fwd = kit.pop("_cfg"), kit["fwd_gflops_per_image"] * 1e9
    kit["utilisation"] = kit["tflops"] / peak["peak_tflops"]
    emit({**common, **_round(kit)})
    if not a.no_mixture:  # the same step on the slots a stage-2 batch uses: what training actually runs
        mix = kit_case(a.config, a.batch, a.dtype, mixture=True)
        mix.pop("_cfg")
        mix["utilisation"] = mix["tflops"] / peak["peak_tflops"]
        emit({**common, **_round(mix)})
    if not a.no_peer:
        peer = peer_case(cfg, a.batch, a.dtype, fwd)
        peer["utilisation"] = peer["tflops"] / peak["peak_tflops"]
        emit({**common, **_round(peer)})
        emit({**common, "model": "ratio kit/peer", "images_per_s": kit["images_per_s"] / peer["images_per_s"],
              "utilisation": kit["utilisation"] / peer["utilisation"]})


def _round(d):
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


if __name__ == "__main__":
    main()
