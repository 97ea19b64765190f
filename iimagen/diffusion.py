"""Diffusion as in Instruct-Imagen (paper App. A.2.2): cosine schedule, v-prediction, L2 loss, DDPM/DDIM/DPM-Solver++
samplers and (oscillating) classifier-free guidance.

Notation (Kingma et al. 2021; Salimans & Ho 2022). Time `t` is continuous in [0, 1]; t = 0 is clean data, t = 1 noise.

    x_t = alpha(t) x_0 + sigma(t) eps,        eps ~ N(0, I),      alpha^2 + sigma^2 = 1
    log-SNR  lambda(t) = log(alpha^2 / sigma^2)
    v = alpha eps - sigma x_0                 (the network's target, "v-prediction")
    x_0 = alpha x_t - sigma v,    eps = sigma x_t + alpha v
    loss = E_{t ~ U[0,1], eps} || v_theta(x_t, t, c) - v ||^2      (per example: mean over pixels)

Everything here is pure jax. Condition dropout (for classifier-free guidance) belongs to the data pipeline, not here.
The samplers encode the text and the context **once** per sample, then run the whole denoising loop inside one
`lax.scan` under `jax.jit`: static shapes, deterministic by seed.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# The cosine schedule
# ---------------------------------------------------------------------------------------------------------------------
COSINE_S = 0.008  # Nichol & Dhariwal's offset: alpha stays away from 1 near t = 0 (the "small offset")
LOGSNR_MIN, LOGSNR_MAX = -20.0, 20.0  # clipping keeps log-SNR finite at both ends (t = 0 and t = 1)
NUM_TRAIN_TIMESTEPS = 1000  # the discrete grid diffusers' schedulers live on; discrete n <-> t = (n + 1) / N


class DiffusionError(ValueError):
    """A bad sampler / guidance argument; the message names the field and the fix."""


def log_snr(t):
    """lambda(t) = log(alpha_bar(t) / (1 - alpha_bar(t))) of the cosine schedule, clipped to [-20, 20].

        alpha_bar(t) = cos^2(pi/2 (t + s) / (1 + s)) / cos^2(pi/2 s / (1 + s)),   s = 0.008

    which is exactly diffusers' `squaredcos_cap_v2` at t = (n + 1) / 1000 (up to its beta cap in the last steps).
    """
    t = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, 1.0)
    f = lambda u: jnp.cos(0.5 * math.pi * (u + COSINE_S) / (1 + COSINE_S)) ** 2
    abar = f(t) / f(0.0)
    lam = jnp.log(jnp.maximum(abar, 1e-30)) - jnp.log(jnp.maximum(1.0 - abar, 1e-30))
    return jnp.clip(lam, LOGSNR_MIN, LOGSNR_MAX)


def alpha_sigma(t):
    """(alpha(t), sigma(t)) from the log-SNR: alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda), so
    alpha^2 + sigma^2 = 1 exactly and alpha(t) ~ cos(pi/2 t) (with the offset and clipping above)."""
    lam = log_snr(t)
    return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def _b(a, x):
    """Broadcast a per-example [B] (or scalar) array against x [B, H, W, C]."""
    a = jnp.asarray(a, jnp.float32)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


# ---------------------------------------------------------------------------------------------------------------------
# Forward process, targets and conversions
# ---------------------------------------------------------------------------------------------------------------------
def q_sample(x0, t, noise):
    """Forward noising q(x_t | x_0): x_t = alpha(t) x_0 + sigma(t) eps."""
    a, s = alpha_sigma(t)
    return _b(a, x0) * x0 + _b(s, x0) * noise


def v_target(x0, noise, t):
    """The v-prediction target (Salimans & Ho 2022): v = alpha eps - sigma x_0."""
    a, s = alpha_sigma(t)
    return _b(a, x0) * noise - _b(s, x0) * x0


def x0_from_v(x_t, v, t):
    """x_0 = alpha x_t - sigma v."""
    a, s = alpha_sigma(t)
    return _b(a, x_t) * x_t - _b(s, x_t) * v


def eps_from_v(x_t, v, t):
    """eps = sigma x_t + alpha v."""
    a, s = alpha_sigma(t)
    return _b(s, x_t) * x_t + _b(a, x_t) * v


def v_from_x0(x_t, x0, t):
    """v = (alpha x_t - x_0) / sigma (the inverse of `x0_from_v`; undefined where sigma = 0)."""
    a, s = alpha_sigma(t)
    return (_b(a, x_t) * x_t - x0) / _b(s, x_t)


def threshold(x0, mode: str = "dynamic", percentile: float = 99.5):
    """Keep the predicted x_0 inside the data range [-1, 1].

    - "static": clip to [-1, 1] (DDPM's clipping).
    - "dynamic": Imagen's dynamic thresholding (Saharia et al. 2022, §2.3): per example, s = max(1, the 99.5th
      percentile of |x_0|); clip to [-s, s] and divide by s. With the paper's large guidance (w = 25) static clipping
      saturates the image; dynamic thresholding is what Imagen uses, so it is the kit's default.
    - "none": leave x_0 alone.
    """
    if mode == "none":
        return x0
    if mode == "static":
        return jnp.clip(x0, -1.0, 1.0)
    if mode == "dynamic":
        s = jnp.percentile(jnp.abs(x0).reshape(x0.shape[0], -1), percentile, axis=1)
        s = _b(jnp.maximum(s, 1.0), x0)
        return jnp.clip(x0, -s, s) / s
    raise DiffusionError(f"clip={mode!r} is not a thresholding mode; use 'dynamic', 'static' or 'none'")


# ---------------------------------------------------------------------------------------------------------------------
# The training loss
# ---------------------------------------------------------------------------------------------------------------------
def diffusion_loss(model, batch, rng, t_range=(0.0, 1.0), ctx_capacity=None):
    """The paper's L2 loss on v (App. A.2.2): t ~ U[0, 1], eps ~ N(0, I), x_t = alpha x_0 + sigma eps,

        loss_i = mean_pixels (v_theta(x_t, t, c_i) - (alpha eps - sigma x_0))^2

    `model(x_t, t, text_ids, ctx_image, ctx_ids, ctx_mask) -> v` (an `InstructImagen` or any callable with that
    signature); `batch` holds `image` and the instruction keys of docs/contracts.md. Returns (mean loss, per-example
    loss [B]). `t_range` narrows t to U[t_range] (evaluate.context_use); the same `rng` gives the same t and noise.
    `ctx_capacity` (static): how many context slots the batch uses at most (`InstructImagen.encode_context`).
    """
    x0 = jnp.asarray(batch["image"], jnp.float32)
    rt, rn = jax.random.split(rng)
    t = jax.random.uniform(rt, (x0.shape[0],), jnp.float32, minval=t_range[0], maxval=t_range[1])
    noise = jax.random.normal(rn, x0.shape, jnp.float32)
    packed = {} if ctx_capacity is None else {"ctx_capacity": ctx_capacity}
    v = model(q_sample(x0, t, noise), t, batch["text_ids"], batch.get("ctx_image"), batch.get("ctx_ids"),
              batch.get("ctx_mask"), **packed)
    per_example = jnp.mean((v.astype(jnp.float32) - v_target(x0, noise, t)) ** 2, axis=tuple(range(1, x0.ndim)))
    return per_example.mean(), per_example


# ---------------------------------------------------------------------------------------------------------------------
# One reverse step from time t to an earlier time s < t
# ---------------------------------------------------------------------------------------------------------------------
def ddpm_step(x_t, v, t, s, noise, clip: str = "static"):
    """Ancestral DDPM step: a draw from q(x_s | x_t, x_0 = x0_hat) (Ho et al. 2020, in alpha/sigma form):

        x0_hat = threshold(alpha_t x_t - sigma_t v)
        alpha_ts = alpha_t / alpha_s,   sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2
        mean = (alpha_ts sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_ts^2 / sigma_t^2) x0_hat
        var  = sigma_ts^2 sigma_s^2 / sigma_t^2
        x_s  = mean + sqrt(var) noise

    Returns (x_s, x0_hat)."""
    at, st = alpha_sigma(t)
    as_, ss = alpha_sigma(s)
    x0 = threshold(_b(at, x_t) * x_t - _b(st, x_t) * v, clip)
    ats = at / as_
    s2ts = jnp.maximum(st**2 - ats**2 * ss**2, 0.0)
    mean = _b(ats * ss**2 / st**2, x_t) * x_t + _b(as_ * s2ts / st**2, x_t) * x0
    return mean + _b(jnp.sqrt(s2ts * ss**2 / st**2), x_t) * noise, x0


def ddim_step(x_t, v, t, s, eta: float = 0.0, noise=None, clip: str = "static"):
    """DDIM step (Song et al. 2021), eta = 0 deterministic, eta = 1 as stochastic as DDPM:

        x0_hat = threshold(alpha_t x_t - sigma_t v),   eps_hat = sigma_t x_t + alpha_t v
        c = eta sqrt(sigma_ts^2 sigma_s^2 / sigma_t^2)
        x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c noise

    (eps_hat comes from the raw v, as in diffusers' `FlaxDDIMScheduler`.) Returns (x_s, x0_hat)."""
    at, st = alpha_sigma(t)
    as_, ss = alpha_sigma(s)
    x0 = threshold(_b(at, x_t) * x_t - _b(st, x_t) * v, clip)
    eps = _b(st, x_t) * x_t + _b(at, x_t) * v
    ats = at / as_
    c = eta * jnp.sqrt(jnp.maximum(st**2 - ats**2 * ss**2, 0.0) * ss**2 / st**2)
    x_s = _b(as_, x_t) * x0 + _b(jnp.sqrt(jnp.maximum(ss**2 - c**2, 0.0)), x_t) * eps
    if noise is not None:
        x_s = x_s + _b(c, x_t) * noise
    return x_s, x0


# ---------------------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance (Ho & Salimans 2022) on v.

    - plain CFG, one scale w (`context_scale=None`): v = v_u + w (v_c - v_u), where v_u drops text **and** context
      (empty text + all-False ctx_mask, the data pipeline's 10 % "drop both").
    - separate scales (`context_scale=w_c`, Re-Imagen's idea): with v_t = text only (context dropped),
      v = v_u + w (v_t - v_u) + w_c (v_c - v_t). With w_c = w this is plain CFG.
    - per-reference scales (`references={i: w_i}`, the kit's extension, not in the paper): a scale for one context
      item [ref#i] on top of either form above. With v_{c-i} = everything but [ref#i] (its slot masked, the text
      unchanged), v += (w_i - w_c) (v_c - v_{c-i}) for each such i, where w_c is the context scale (w in plain CFG).
      It pushes along what [ref#i] adds *given the other items*, e.g. a subject under a control map that already fixes
      the layout. Each reference costs one more branch; w_i = w_c adds nothing (the term is 0).
    - `oscillate=True`: the paper's recipe (App. A.2.2), "alternating between a guidance at the scale of 25.0 and no
      guidance every consecutive step": guided on even steps (0, 2, ...), the conditional branch alone on odd steps,
      which then costs a single forward pass.

    `Guidance()` is the paper's default (w = 25, oscillating). `Guidance.none()` samples the conditional model alone.
    """

    scale: float = 25.0
    context_scale: float | None = None
    oscillate: bool = True
    references: tuple = ()  # ((i, w_i), ...) sorted by i (1 = [ref#1]); a dict {i: w_i} is accepted

    def __post_init__(self):
        for name in ("scale", "context_scale"):
            val = getattr(self, name)
            if val is not None and (not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0):
                raise DiffusionError(f"Guidance.{name}={val!r} must be a finite number >= 0 (1.0 = no guidance)")
        refs = self.references
        pairs = list(refs.items()) if isinstance(refs, dict) else list(refs or ())
        out = {}
        for pair in pairs:
            i, w = pair if isinstance(pair, (tuple, list)) and len(pair) == 2 else (None, None)
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 1 or i in out:
                raise DiffusionError(f"Guidance.references={refs!r}: give each reference number once, as "
                                     "{i: w_i} with i >= 1 ([ref#1] is 1)")
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise DiffusionError(f"Guidance.references[{i}]={w!r} must be a finite number >= 0")
            out[int(i)] = float(w)
        object.__setattr__(self, "references", tuple(sorted(out.items())))

    @classmethod
    def paper(cls) -> "Guidance":
        """w = 25 on every other step, none on the others (App. A.2.2)."""
        return cls(25.0, None, True)

    @classmethod
    def cfg(cls, scale: float, oscillate: bool = False, references=()) -> "Guidance":
        return cls(float(scale), None, oscillate, references)

    @classmethod
    def separate(cls, text_scale: float, context_scale: float, oscillate: bool = False, references=()) -> "Guidance":
        return cls(float(text_scale), float(context_scale), oscillate, references)

    @classmethod
    def none(cls, references=()) -> "Guidance":
        return cls(1.0, None, False, references)

    @property
    def n_base(self) -> int:
        """Branches of the text/context formula: 1 (cond), 2 (cond, uncond) or 3 (cond, uncond, text-only)."""
        if self.context_scale is not None:
            return 3
        return 1 if self.scale == 1.0 else 2

    @property
    def n_branches(self) -> int:
        """Forward passes per guided step: `n_base`, plus one (all context but [ref#i]) per reference scale."""
        return self.n_base + len(self.references)

    def scales_at(self, steps: int) -> np.ndarray:
        """[steps, 2] array of the (text, context) scale used at each step (1 = no guidance), for plots."""
        w = np.array([self.scale, self.scale if self.context_scale is None else self.context_scale], np.float32)
        out = np.tile(w, (steps, 1))
        if self.oscillate:
            out[1::2] = 1.0
        return out


def combine(vs, scale, context_scale, n_base: int | None = None, ref_scales=()):
    """Mix the branch outputs [v_c, v_u(, v_t), v_{c-i}...] by the guidance formula of `Guidance`: the first `n_base`
    (default: all) by the text/context formula, then (w_i - w_c) (v_c - v_{c-i}) per reference i. `context_scale`
    is w_c, which is `scale` itself in plain CFG."""
    n_base = len(vs) if n_base is None else n_base
    base, drops = vs[:n_base], vs[n_base:]
    if n_base == 1:
        v = base[0]
    elif n_base == 2:
        v_c, v_u = base
        v = v_u + scale * (v_c - v_u)
    else:
        v_c, v_u, v_t = base
        v = v_u + scale * (v_t - v_u) + context_scale * (v_c - v_t)
    for w_i, v_drop in zip(ref_scales, drops, strict=True):
        v = v + (w_i - context_scale) * (vs[0] - v_drop)
    return v


# ---------------------------------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------------------------------
SAMPLERS = {"ddpm": 256, "ddim": 50, "dpm": 20}  # name -> default number of steps
CLIP_MODES = ("dynamic", "static", "none")


class _Plan(NamedTuple):  # everything static about one sampling run (a new plan compiles once)
    sampler: str
    steps: int
    n_base: int  # Guidance.n_base
    dropped: tuple  # context slots (0-based) whose per-reference branch drops them, in order
    oscillate: bool
    clip: str
    every: int
    # Oscillating steps: lax.cond (False: unguided steps run only the conditional branch) or compute every branch and
    # select (True). Measured on a 2-core CPU, tiny, batch 8, 64 DDPM steps: lax.cond 0.98 s/image, select 1.25 s/image
    # (benchmarks/sampling.py), so lax.cond is the default.
    select: bool
    resolution: int


def _silence_diffusers():
    for name in ("diffusers", "diffusers.schedulers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


@functools.lru_cache(maxsize=None)
def dpm_solver(steps: int):
    """diffusers' `FlaxDPMSolverMultistepScheduler` (DPM-Solver++, 2nd order) on the kit's schedule and its state.

    Built with `beta_schedule="squaredcos_cap_v2"` and `prediction_type="v_prediction"` on 1000 discrete steps. Its
    alphas_cumprod[n] = alpha_bar((n + 1) / 1000), so **discrete timestep n is the kit's t = (n + 1) / 1000** (the
    last one, n = 999, is t = 1). Its final step lands on n = 0 (t = 0.001, sigma ~ 0.006), which is kept as the
    sample. Thresholding is the kit's own (see `sample`), so diffusers' is off."""
    _silence_diffusers()
    from diffusers import FlaxDPMSolverMultistepScheduler

    sched = FlaxDPMSolverMultistepScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                                            prediction_type="v_prediction", algorithm_type="dpmsolver++",
                                            solver_order=2, thresholding=False)
    with jax.ensure_compile_time_eval():  # concrete arrays even when first called under jit (this is cached)
        return sched, sched.create_state()


def _split_keys(rng, batch_size):
    """Per-example keys [B] from one key, or the [B] keys given (so an image does not depend on its batch slot)."""
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    if rng.ndim == (0 if typed else 1):
        return jax.random.split(rng, batch_size)
    if rng.shape[0] != batch_size:
        raise DiffusionError(f"rng holds {rng.shape[0]} keys for a batch of {batch_size}; pass one key or one per "
                             "example")
    return rng


def _normal(keys, step, shape):
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape, jnp.float32))(keys)


def _encode(model, batch, n_base, dropped=()):
    """Text and context features of every guidance branch, concatenated along the batch: [cond, uncond, text-only,
    then per reference: all context but that slot]. Runs once per sample, before the loop (the context features do
    not depend on the step, design.md)."""
    ids = jnp.asarray(batch["text_ids"])
    use_ctx = getattr(getattr(model, "cfg", None), "use_context", True) and batch.get("ctx_mask") is not None
    ctx_in = (batch["ctx_image"], batch["ctx_ids"], batch["ctx_mask"]) if use_ctx else None
    branches = [(model.encode_text(ids), model.encode_context(*ctx_in) if use_ctx else None)]
    if n_base >= 2:  # unconditional: empty text + no context (zeros in every slot, all-False mask)
        no_ctx = model.encode_context(*(jnp.zeros_like(a) for a in ctx_in)) if use_ctx else None
        branches.append((model.encode_text(jnp.zeros_like(ids)), no_ctx))
    if n_base == 3:  # text only: context dropped
        branches.append((branches[0][0], no_ctx))
    if dropped:  # per reference: [ref#k+1] masked out, everything else as in the conditional branch
        img, cids, mask = ctx_in[0], ctx_in[1], jnp.asarray(ctx_in[2])
        branches += [(branches[0][0], model.encode_context(img, cids, mask.at[:, k].set(False))) for k in dropped]
    cat = lambda *xs: jnp.concatenate(xs, axis=0)
    text = jax.tree.map(cat, *[b[0] for b in branches])
    ctx = jax.tree.map(cat, *[b[1] for b in branches]) if use_ctx else None
    return text, ctx, branches[0]


@functools.partial(jax.jit, static_argnames=("graphdef", "plan"))
def _sample_jit(graphdef, state, batch, keys, scales, eta, *, plan: _Plan):
    from flax import nnx

    model = nnx.merge(graphdef, state)
    if hasattr(model, "eval"):
        model.eval()  # deterministic layers (no dropout) while sampling
    B, shape = keys.shape[0], (plan.resolution, plan.resolution, 3)
    text_all, ctx_all, (text_c, ctx_c) = _encode(model, batch, plan.n_base, plan.dropped)
    n_branches = plan.n_base + len(plan.dropped)

    def guided_v(x, t):  # all branches in one batched forward pass
        n = n_branches
        v = model.denoise(jnp.concatenate([x] * n), jnp.concatenate([t] * n), text_all, ctx_all)
        vs = jnp.split(v.astype(jnp.float32), n)
        return combine(vs, scales[0], scales[1], plan.n_base, scales[2:]), vs[0]  # scales[2:]: one per reference

    def cond_v(x, t):
        return model.denoise(x, t, text_c, ctx_c).astype(jnp.float32)

    def velocity(k, x, t):
        if n_branches == 1:
            return cond_v(x, t)
        if not plan.oscillate:
            return guided_v(x, t)[0]
        guided_now = k % 2 == 0
        if plan.select:
            v_g, v_c = guided_v(x, t)
            return jnp.where(guided_now, v_g, v_c)
        return jax.lax.cond(guided_now, lambda: guided_v(x, t)[0], lambda: cond_v(x, t))

    S = plan.steps
    n_int = S // plan.every if plan.every else 0
    x = _normal(keys, 0, shape)
    buf = jnp.zeros((max(n_int, 1), B) + shape, jnp.float32)

    def record(buf, k, x0):
        if not plan.every:
            return buf
        idx = jnp.where((k + 1) % plan.every == 0, k // plan.every, n_int)  # n_int = out of range: dropped
        return buf.at[idx].set(x0, mode="drop")

    if plan.sampler in ("ddpm", "ddim"):
        def body(carry, k):
            x, buf = carry
            t = jnp.full((B,), 1.0 - k / S, jnp.float32)
            s = jnp.full((B,), 1.0 - (k + 1) / S, jnp.float32)
            v = velocity(k, x, t)
            noise = _normal(keys, k + 1, shape)
            if plan.sampler == "ddpm":
                x, x0 = ddpm_step(x, v, t, s, noise, plan.clip)
            else:
                x, x0 = ddim_step(x, v, t, s, eta, noise, plan.clip)
            return (x, record(buf, k, x0)), None

        (x, buf), _ = jax.lax.scan(body, (x, buf), jnp.arange(S))
    else:  # DPM-Solver++ from diffusers, on its discrete grid: n <-> t = (n + 1) / N
        sched, st0 = dpm_solver(S)
        st = sched.set_timesteps(st0, S, (B,) + shape)
        N = sched.config.num_train_timesteps

        def body(carry, kn):
            x, buf, st = carry
            k, n = kn
            t = jnp.full((B,), (n + 1) / N, jnp.float32)
            v = velocity(k, x, t)
            a, s = st.alpha_t[n], st.sigma_t[n]
            x0 = threshold(a * x - s * v, plan.clip)
            v = (a * x - x0) / s  # the v whose x0 is the thresholded one (identity when clip == "none")
            x, st = sched.step(st, v, n, x, return_dict=False)
            return (x, record(buf, k, x0), st), None

        (x, buf, st), _ = jax.lax.scan(body, (x, buf, st), (jnp.arange(S), st.timesteps))
    return jnp.clip(x, -1.0, 1.0), buf[:n_int]


def sample(model, batch, rng, sampler: str = "ddpm", steps: int | None = None, guidance: Guidance | None = None, *,
           eta: float = 0.0, clip: str = "dynamic", intermediates_every: int = 0, _select: bool = False):
    """Generate images for a batch of instructions (paper App. A.2.2: 256-step DDPM + oscillating CFG by default).

    model: an `InstructImagen` (nnx.Module with encode_text / encode_context / denoise).
    batch: the instruction keys of docs/contracts.md (`text_ids`, and `ctx_image`, `ctx_ids`, `ctx_mask`).
    rng: one key (split per example) or one key per example ([B] keys), e.g. `jax.random.PRNGKey(0)`.
    sampler: "ddpm" (ancestral, 256 steps), "ddim" (50 steps, `eta` = 0 deterministic) or "dpm" (diffusers'
      DPM-Solver++, 20 steps). Times: step k goes from t = 1 - k/S to 1 - (k+1)/S (ddpm, ddim).
    clip: thresholding of the predicted x_0 ("dynamic", Imagen's default; "static"; "none").
    intermediates_every: if N > 0, also return the x_0 predictions after steps N, 2N, ... ([steps // N, B, R, R, 3]).

    Returns x [B, R, R, 3] float32 in [-1, 1] (and the intermediates if asked for).
    """
    from flax import nnx

    if sampler not in SAMPLERS:
        raise DiffusionError(f"sampler={sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
    steps = SAMPLERS[sampler] if steps is None else steps
    if not isinstance(steps, (int, np.integer)) or steps < 1 or (sampler == "dpm" and steps > NUM_TRAIN_TIMESTEPS):
        raise DiffusionError(f"steps={steps!r} must be an integer >= 1 (<= {NUM_TRAIN_TIMESTEPS} for 'dpm')")
    if clip not in CLIP_MODES:
        raise DiffusionError(f"clip={clip!r} is not a thresholding mode; use one of {', '.join(CLIP_MODES)}")
    if not (isinstance(intermediates_every, (int, np.integer)) and 0 <= intermediates_every):
        raise DiffusionError(f"intermediates_every={intermediates_every!r} must be an integer >= 0 (0 = none)")
    guidance = Guidance() if guidance is None else guidance
    if not isinstance(guidance, Guidance):
        raise DiffusionError(f"guidance={guidance!r} must be a Guidance, e.g. Guidance.cfg(5.0) or Guidance()")
    if "text_ids" not in batch:
        raise DiffusionError("batch has no 'text_ids'; build it with iimagen.instruction.batch_instructions")
    R = getattr(getattr(model, "cfg", None), "resolution", None) or np.shape(batch["ctx_image"])[2]
    arrays = {k: jnp.asarray(batch[k]) for k in ("text_ids", "ctx_image", "ctx_ids", "ctx_mask") if k in batch}
    B = arrays["text_ids"].shape[0]
    keys = _split_keys(rng, B)
    K = np.shape(arrays["ctx_mask"])[1] if "ctx_mask" in arrays else 0
    if guidance.references and (K == 0 or not getattr(getattr(model, "cfg", None), "use_context", True)):
        raise DiffusionError("Guidance.references needs context items, but this model or batch has none; drop the "
                             "per-reference scales")
    for i, _ in guidance.references:
        if i > K:
            raise DiffusionError(f"Guidance.references names [ref#{i}], but the batch holds {K} context slots; use "
                                 f"reference numbers 1..{K}")
    plan = _Plan(sampler, int(steps), guidance.n_base, tuple(i - 1 for i, _ in guidance.references),
                 bool(guidance.oscillate), clip, int(intermediates_every), bool(_select), int(R))
    scale_c = guidance.scale if guidance.context_scale is None else guidance.context_scale
    scales = jnp.array([guidance.scale, scale_c] + [w for _, w in guidance.references], jnp.float32)
    graphdef, state = nnx.split(model)
    x, inter = _sample_jit(graphdef, state, arrays, keys, scales, jnp.float32(eta), plan=plan)
    return (x, inter) if intermediates_every else x
