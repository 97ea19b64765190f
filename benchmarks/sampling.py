"""Sampling speed: the paper's recipe (256-step DDPM, oscillating CFG w = 25) and 20-step DPM-Solver++, with 0 and 3
contexts, the context branch's share of a step, lax.cond vs compute-and-select for oscillating guidance, and the peer
(diffusers' FlaxUNet2DConditionModel at about matched FLOPs). One JSON line per case.

    .venv/bin/python benchmarks/sampling.py                      # tiny on CPU
    .venv/bin/python benchmarks/sampling.py --config small       # on an accelerator

Timings exclude compilation (each case runs once to compile, then `--repeats` times; the best run is reported).
Weights are random (speed does not depend on them). The number of filled context slots does not change the work:
K slots are always computed (static shapes; empty slots are masked), so "0 contexts" is also shown for the stage-0
text-to-image model (`use_context=False`), which is what skipping the context branch saves.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from iimagen import diffusion as D
from iimagen.checkpoint import random_model
from iimagen.configs import get_config
from iimagen.model import flops_per_image
from iimagen.model.unet import xla_flops


def make_batch(cfg, B, n_ctx, seed=0):
    r = np.random.default_rng(seed)
    mask = np.zeros((B, cfg.K), bool)
    mask[:, :n_ctx] = True
    return {"text_ids": r.integers(9, 500, (B, cfg.text_len)).astype(np.int32),
            "ctx_image": (r.uniform(-1, 1, (B, cfg.K, cfg.resolution, cfg.resolution, 3)) * mask[..., None, None, None]
                          ).astype(np.float32),
            "ctx_ids": (r.integers(9, 500, (B, cfg.K, cfg.ctx_text_len)) * mask[..., None]).astype(np.int32),
            "ctx_mask": mask}


def best_time(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def emit(**kw):
    kw = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in kw.items()}
    print(json.dumps(kw), flush=True)


def step_time(model, B, n_ctx, repeats, with_ctx=True):
    """Seconds of one jitted denoise call at batch B (text and context already encoded)."""
    b = make_batch(model.cfg, B, n_ctx)
    gd, st = nnx.split(model)
    text = model.encode_text(jnp.asarray(b["text_ids"]))
    ctx = model.encode_context(*(jnp.asarray(b[k]) for k in ("ctx_image", "ctx_ids", "ctx_mask"))) \
        if with_ctx and model.cfg.use_context else None
    f = jax.jit(lambda st, x, t, tx, c: nnx.merge(gd, st).denoise(x, t, tx, c))
    x, t = jnp.zeros((B, model.cfg.resolution, model.cfg.resolution, 3)), jnp.full((B,), 0.5)
    return best_time(lambda: f(st, x, t, text, ctx), repeats)


def peer(cfg, target_flops):
    """diffusers' FlaxUNet2DConditionModel (pixel space, the kit's number of levels, cross-attention to the text tokens
    at the lowest level; its `attention_head_dim` is the number of heads) at about the kit's FLOPs per step.

    Its GroupNorm has 32 groups, so widths come in multiples of 32, and its first level runs at full resolution (the
    kit halves on entry to every level): at 32 px even the narrowest one costs ~5x the kit. So the search also tries
    `layers_per_block=1` and feeding it the image pixel-unshuffled 2x2 (R/2 px, 12 channels, as efficient pixel UNets
    do), and keeps the variant whose XLA FLOP count is closest to the kit's."""
    D._silence_diffusers()
    from diffusers import FlaxUNet2DConditionModel

    levels = len(cfg.channel_mult)
    downs = ("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",)
    ups = ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1)
    best = None
    for s2d in (1, 2):
        for layers in sorted({cfg.blocks_per_level, 1}, reverse=True):
            for c in peer_widths(cfg):
                size, chans = cfg.resolution // s2d, 3 * s2d * s2d
                unet = FlaxUNet2DConditionModel(sample_size=size, in_channels=chans, out_channels=chans,
                                                down_block_types=downs, up_block_types=ups,
                                                block_out_channels=tuple(c * m for m in cfg.channel_mult),
                                                layers_per_block=layers,
                                                attention_head_dim=max(1, c * cfg.channel_mult[-1] // cfg.head_dim),
                                                cross_attention_dim=cfg.text_width)
                x = jax.ShapeDtypeStruct((1, chans, size, size), jnp.float32)
                txt = jax.ShapeDtypeStruct((1, cfg.text_len, cfg.text_width), jnp.float32)
                params = jax.eval_shape(lambda: unet.init({"params": jax.random.PRNGKey(0)}, jnp.zeros(x.shape),
                                                          jnp.ones((1,), jnp.int32), jnp.zeros(txt.shape)))
                # XLA's count on the lowered program: within 0.1 % of the compiled one's, and no backend compile
                # (an accelerator autotunes every candidate's kernels, minutes over the search)
                flops = xla_flops(jax.jit(lambda p, x, t, e: unet.apply(p, x, t, e).sample).lower(
                    params, x, jax.ShapeDtypeStruct((1,), jnp.int32), txt))
                variant = dict(block_out_channels=[c * m for m in cfg.channel_mult], layers_per_block=layers,
                               pixel_unshuffle=s2d, sample_size=size, in_channels=chans)
                if best is None or abs(flops / target_flops - 1) < abs(best[1] / target_flops - 1):
                    best = (variant, flops, unet, params)
                if flops > target_flops:  # FLOPs grow with the width: the next ones are only further away
                    break
    return best


def peer_widths(cfg, widths=(32, 64, 96, 128, 160, 192, 256, 320)):
    """The peer's base widths: multiples of 32 (its GroupNorm has 32 groups) whose lowest-level width is a whole number
    of the kit's heads (`head_dim` each). Without the second rule `small` (head_dim 64, widths x3 at the lowest
    level) tried 160 -> 480 channels in 7 heads, and diffusers failed to reshape 476 channels into 480."""
    return tuple(c for c in widths if c * cfg.channel_mult[-1] % cfg.head_dim == 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ddpm-steps", type=int, default=256)
    p.add_argument("--select-steps", type=int, default=64, help="steps for the cond-vs-select comparison")
    a = p.parse_args(argv)
    cfg = get_config(a.config)
    dev = f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}"
    B = a.batch
    model = random_model(cfg)
    common = dict(config=cfg.name, device=dev, batch=B, jax=jax.__version__)

    # 1. the paper's recipe and DPM-Solver, 0 and 3 contexts (and the text-to-image model)
    t2i = random_model(dataclasses.replace(cfg, use_context=False))
    recipes = [("ddpm", a.ddpm_steps, D.Guidance(), "paper: w=25 oscillating"),
               ("dpm", 20, D.Guidance.cfg(5.0), "cfg w=5 every step")]
    for sampler, steps, g, gname in recipes:
        for label, m, n_ctx in (("3 contexts", model, min(3, cfg.K)), ("0 contexts (empty slots)", model, 0),
                                ("text-to-image model", t2i, 0)):
            b = make_batch(m.cfg, B, n_ctx)
            sec = best_time(lambda: D.sample(m, b, jax.random.PRNGKey(0), sampler=sampler, steps=steps, guidance=g),
                            a.repeats)
            emit(case=f"{sampler}-{steps}", contexts=label, guidance=gname, s_per_image=sec / B,
                 images_per_s=B / sec, **common)

    # 2. oscillating guidance: lax.cond (only the conditional branch on unguided steps) vs compute-all-and-select
    b = make_batch(cfg, B, min(3, cfg.K))
    for select in (False, True):
        sec = best_time(lambda: D.sample(model, b, jax.random.PRNGKey(0), sampler="ddpm", steps=a.select_steps,
                                         guidance=D.Guidance(), _select=select), a.repeats)
        emit(case="oscillating-guidance-mode", mode="select" if select else "lax.cond", steps=a.select_steps,
             s_per_image=sec / B, **common)

    # 3. the context branch's share of one denoise step (same config, with vs without context cross-attention)
    t_ctx = step_time(model, B, min(3, cfg.K), 3 * a.repeats)
    t_t2i = step_time(t2i, B, 0, 3 * a.repeats)
    emit(case="context-branch-share", step_s_with_context=t_ctx, step_s_text_to_image=t_t2i,
         context_share=1 - t_t2i / t_ctx, **common)

    # 4. the peer at about matched FLOPs: one denoise step, and the paper's recipe projected from step times
    kit_flops = flops_per_image(cfg, what="denoise")
    variant, pflops, unet, pshapes = peer(cfg, kit_flops)
    r = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.05 * r.standard_normal(s.shape), s.dtype), pshapes)
    apply = jax.jit(lambda p, x, t, e: unet.apply(p, x, t, e).sample)
    rows = {}
    for n in (B, 2 * B):
        x = jnp.zeros((n, variant["in_channels"], variant["sample_size"], variant["sample_size"]))
        e = jnp.zeros((n, cfg.text_len, cfg.text_width))
        tt = jnp.full((n,), 500, jnp.int32)
        rows[("peer", n)] = best_time(lambda: apply(params, x, tt, e), 3 * a.repeats)
        rows[("kit", n)] = step_time(model, n, min(3, cfg.K), 3 * a.repeats)
    for who in ("kit", "peer"):
        # oscillating CFG: half the steps run 2B images (guided), half run B (conditional only)
        recipe = a.ddpm_steps / 2 * (rows[(who, 2 * B)] + rows[(who, B)]) / B
        emit(case="peer-comparison", model=who, flops_per_step_image=kit_flops if who == "kit" else pflops,
             peer=variant if who == "peer" else None,
             gflop_per_s=(kit_flops if who == "kit" else pflops) * 2 * B / rows[(who, 2 * B)] / 1e9,
             cfg_img_steps_per_s=2 * B / rows[(who, 2 * B)], projected_ddpm_osc_s_per_image=recipe, **common)
    emit(case="peer-ratio", kit_over_peer_step_time=rows[("kit", 2 * B)] / rows[("peer", 2 * B)],
         flops_ratio=kit_flops / pflops, **common)


if __name__ == "__main__":
    main()
