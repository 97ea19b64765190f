"""iimagen.diffusion: schedule identities, conversions, samplers, guidance, diffusers agreement (stand-in denoisers)."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from iimagen import diffusion as D

R, K, L, CL = 8, 2, 6, 4


class TF(NamedTuple):
    tokens: jax.Array
    mask: jax.Array
    pooled: jax.Array


class CF(NamedTuple):
    tokens: jax.Array
    mask: jax.Array


@dataclasses.dataclass(frozen=True)
class ToyCfg:
    resolution: int = R
    K: int = K
    use_context: bool = True


class Toy(nnx.Module):
    """A stand-in denoiser with the InstructImagen API. Its context encoder uses `sort`, an op nothing else here uses,
    so the loop body's jaxpr shows whether the encoder ran inside the loop. With `x0` given it is a perfect denoiser
    (it returns the v of that x0 whatever the conditioning)."""

    def __init__(self, seed=0, x0=None, use_context=True):
        k = jax.random.split(jax.random.PRNGKey(seed), 3)
        self.cfg = ToyCfg(use_context=use_context)
        self.w = nnx.Param(0.3 * jax.random.normal(k[0], (3, 3)))
        self.emb = nnx.Param(jax.random.normal(k[1], (16, 3)))
        self.u = nnx.Param(jax.random.normal(k[2], (3,)))
        self.x0 = None if x0 is None else nnx.Param(jnp.asarray(x0))

    def encode_text(self, ids):
        m = ids > 0
        tok = self.emb[ids] * m[..., None]
        return TF(tok, m, tok.sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1))

    def encode_context(self, img, ids, mask):
        tok = jnp.sort(img.reshape(img.shape[0], img.shape[1], -1, 3), axis=2).mean(2) + self.emb[ids].mean(2)
        return CF(tok * mask[..., None], mask)

    def denoise(self, x, t, text, ctx):
        if self.x0 is not None:
            return D.v_from_x0(x, jnp.broadcast_to(self.x0[...], x.shape), t)
        h = jnp.tanh(x @ self.w[...]) + text.pooled[:, None, None, :] + jnp.sin(4 * t)[:, None, None, None] * self.u
        if ctx is not None:
            h = h + (ctx.tokens.sum(1) / jnp.maximum(ctx.mask.sum(1, keepdims=True), 1))[:, None, None, :]
        return h

    def __call__(self, x, t, ids, ci=None, cids=None, cm=None):
        return self.denoise(x, t, self.encode_text(ids), self.encode_context(ci, cids, cm) if ci is not None else None)


def make_batch(B=3, seed=0):
    r = np.random.default_rng(seed)
    mask = np.zeros((B, K), bool)
    mask[:, 0] = True
    mask[0, 1] = True
    ids = r.integers(1, 16, (B, L)).astype(np.int32)
    ids[:, -2:] = 0
    img = r.uniform(-1, 1, (B, K, R, R, 3)).astype(np.float32) * mask[..., None, None, None]
    return {"text_ids": ids, "ctx_image": img, "ctx_ids": (r.integers(1, 16, (B, K, CL)) * mask[..., None]).astype(
        np.int32), "ctx_mask": mask, "image": r.uniform(-1, 1, (B, R, R, 3)).astype(np.float32)}


# -- schedule ----------------------------------------------------------------------------------------------------------
def test_schedule_identities():
    t = jnp.linspace(0, 1, 1001)
    a, s = D.alpha_sigma(t)
    np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
    lam = np.asarray(D.log_snr(t))
    assert np.all(np.isfinite(lam)) and lam[0] == D.LOGSNR_MAX and lam[-1] == D.LOGSNR_MIN
    assert np.all(np.diff(lam) <= 0) and np.all(np.diff(lam[1:-1]) < 0)  # strictly falling where not clipped
    np.testing.assert_allclose(a[1:-1], np.cos(np.pi / 2 * t[1:-1]), atol=0.02)  # ~cos(pi/2 t), small offset


def test_matches_diffusers_squaredcos_grid():
    """Discrete timestep n of diffusers' squaredcos_cap_v2 is the kit's t = (n + 1) / 1000 (the DPM mapping)."""
    _, st = D.dpm_solver(20)
    a, s = D.alpha_sigma((np.arange(1000) + 1) / 1000)
    np.testing.assert_allclose(st.alpha_t, a, atol=2e-5)
    np.testing.assert_allclose(st.sigma_t, s, atol=2e-5)


def test_conversions_invert_each_other():
    r = np.random.default_rng(1)
    x0, eps = (jnp.asarray(r.normal(size=(4, R, R, 3)), jnp.float32) for _ in range(2))
    t = jnp.array([0.05, 0.3, 0.7, 0.99])
    xt, v = D.q_sample(x0, t, eps), D.v_target(x0, eps, t)
    np.testing.assert_allclose(D.x0_from_v(xt, v, t), x0, atol=1e-5)
    np.testing.assert_allclose(D.eps_from_v(xt, v, t), eps, atol=1e-5)
    np.testing.assert_allclose(D.v_from_x0(xt, x0, t), v, atol=1e-4)


def test_loss_is_zero_for_the_perfect_v_and_positive_otherwise():
    b = make_batch()
    perfect = lambda xt, t, *a: D.v_from_x0(xt, jnp.asarray(b["image"]), t)
    loss, per = D.diffusion_loss(perfect, b, jax.random.PRNGKey(0))
    assert per.shape == (3,) and float(loss) < 1e-6
    loss, per = D.diffusion_loss(Toy(), b, jax.random.PRNGKey(0))
    assert float(loss) > 0.1 and np.isclose(float(loss), float(per.mean()))
    # written out: the same draw of t and eps, by hand
    rt, rn = jax.random.split(jax.random.PRNGKey(0))
    t, eps = jax.random.uniform(rt, (3,)), jax.random.normal(rn, b["image"].shape)
    a, s = (x[:, None, None, None] for x in D.alpha_sigma(t))
    v = Toy()(a * b["image"] + s * eps, t, b["text_ids"], b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
    np.testing.assert_allclose(per, ((v - (a * eps - s * b["image"])) ** 2).mean((1, 2, 3)), rtol=1e-5)


def test_loss_t_range_narrows_t_and_keeps_the_noise():
    b = make_batch(6)
    seen = []
    record = lambda xt, t, *a: (seen.append((t, xt)), jnp.zeros_like(xt))[1]
    D.diffusion_loss(record, b, jax.random.PRNGKey(3))
    D.diffusion_loss(record, b, jax.random.PRNGKey(3), t_range=(0.5, 1.0))
    (t_all, xt_all), (t_hi, xt_hi) = seen
    assert np.all((np.asarray(t_hi) >= 0.5) & (np.asarray(t_hi) <= 1.0))
    np.testing.assert_allclose(t_hi, 0.5 + 0.5 * np.asarray(t_all), atol=1e-6)  # the same uniform draw, rescaled
    # the same eps: x_t - alpha x_0 = sigma eps, so (x_t - alpha x_0) / sigma agree between the two calls
    eps = [(xt - a[:, None, None, None] * b["image"]) / s[:, None, None, None]
           for t, xt in seen for a, s in [D.alpha_sigma(t)]]
    np.testing.assert_allclose(eps[0], eps[1], atol=1e-4)


def test_dynamic_threshold():
    x = jnp.stack([jnp.full((R, R, 3), 0.5), jnp.full((R, R, 3), 3.0)])
    y = D.threshold(x, "dynamic")
    np.testing.assert_allclose(y[0], 0.5)  # in range: untouched
    np.testing.assert_allclose(y[1], 1.0, atol=1e-6)  # s = 3: 3 / 3
    np.testing.assert_allclose(D.threshold(x, "static")[1], 1.0)
    with pytest.raises(D.DiffusionError, match="clip"):
        D.threshold(x, "soft")


# -- steps against diffusers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta,clip", [(0.0, "none"), (0.0, "static"), (0.5, "none")])
def test_ddim_step_matches_diffusers(eta, clip):
    D._silence_diffusers()
    from diffusers import FlaxDDIMScheduler

    N, S = 1000, 10
    abar = np.asarray(D.alpha_sigma((np.arange(N) + 1) / N)[0], np.float64) ** 2
    betas = 1 - abar / np.concatenate([[1.0], abar[:-1]])  # the kit's own alphas, so both use identical ones
    sched = FlaxDDIMScheduler(num_train_timesteps=N, trained_betas=betas.astype(np.float32),
                              prediction_type="v_prediction", clip_sample=clip == "static", set_alpha_to_one=True)
    st = sched.set_timesteps(sched.create_state(), S)
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=(2, R, R, 3)), jnp.float32)
    for n in np.asarray(st.timesteps):
        v = jnp.asarray(r.normal(size=x.shape), jnp.float32)
        ref = sched.step(st, v, int(n), x, eta=eta).prev_sample  # diffusers adds no noise itself
        t, s = jnp.full((2,), (n + 1) / N), jnp.full((2,), max(n - N // S + 1, 0) / N)
        ours, _ = D.ddim_step(x, v, t, s, eta=eta, noise=None, clip=clip)
        np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)
        x = ours


def test_ddpm_step_posterior_moments():
    """With x0 known, the ancestral step's mean/variance are q(x_s | x_t, x_0): check against the closed form in eps."""
    x0 = jnp.full((1, R, R, 3), 0.3)
    eps = jnp.full((1, R, R, 3), -0.7)
    t, s = jnp.array([0.6]), jnp.array([0.5])
    xt = D.q_sample(x0, t, eps)
    v = D.v_target(x0, eps, t)
    m, _ = D.ddpm_step(xt, v, t, s, jnp.zeros_like(xt), clip="none")
    m1, _ = D.ddpm_step(xt, v, t, s, jnp.ones_like(xt), clip="none")
    (at, st), (as_, ss) = D.alpha_sigma(t), D.alpha_sigma(s)
    # DDPM in discrete form: abar_t = at^2, alpha = abar_t / abar_s, beta = 1 - alpha
    alpha, abar_t, abar_s = (at / as_) ** 2, at**2, as_**2
    mean = (jnp.sqrt(abar_s) * (1 - alpha) / (1 - abar_t)) * x0 + (jnp.sqrt(alpha) * (1 - abar_s) / (1 - abar_t)) * xt
    var = (1 - abar_s) / (1 - abar_t) * (1 - alpha)
    np.testing.assert_allclose(m, mean, atol=1e-5)
    np.testing.assert_allclose(m1 - m, jnp.sqrt(var) * jnp.ones_like(xt), atol=1e-5)


# -- guidance ---------------------------------------------------------------------------------------------------------------
def test_oscillating_scale_per_step():
    sc = D.Guidance().scales_at(6)
    np.testing.assert_array_equal(sc[:, 0], [25, 1, 25, 1, 25, 1])
    assert D.Guidance.cfg(3.0).scales_at(4)[:, 0].tolist() == [3, 3, 3, 3]
    assert D.Guidance.separate(2.0, 4.0).scales_at(2).tolist() == [[2, 4], [2, 4]]
    assert [D.Guidance.none().n_branches, D.Guidance().n_branches, D.Guidance.separate(2, 3).n_branches] == [1, 2, 3]
    with pytest.raises(D.DiffusionError, match="scale"):
        D.Guidance(scale=-1.0)


def test_combine_formulas():
    vc, vu, vt = jnp.array(3.0), jnp.array(1.0), jnp.array(2.0)
    assert float(D.combine([vc, vu], 1.0, 1.0)) == 3.0  # w = 1: the conditional branch
    assert float(D.combine([vc, vu], 4.0, 4.0)) == 1 + 4 * 2
    assert float(D.combine([vc, vu, vt], 2.0, 5.0)) == 1 + 2 * (2 - 1) + 5 * (3 - 2)
    assert float(D.combine([vc, vu, vt], 4.0, 4.0)) == float(D.combine([vc, vu], 4.0, 4.0))


def test_reference_scales_formula_and_validation():
    vc, vu, vt, v_no1, v_no2 = (jnp.array(x) for x in (3.0, 1.0, 2.0, 2.5, 0.5))
    # plain CFG (w_c = w = 4) + [ref#1] at 6: (6 - 4) (v_c - v_{c-1}) on top
    assert float(D.combine([vc, vu, v_no1], 4.0, 4.0, 2, [6.0])) == 1 + 4 * 2 + 2 * 0.5
    # separate scales, two references; a reference at w_c adds nothing
    assert float(D.combine([vc, vu, vt, v_no1, v_no2], 2.0, 5.0, 3, [5.0, 1.0])) == 1 + 2 + 5 - 4 * 2.5
    # no base guidance (w = 1): the conditional branch pushed away from "all but [ref#1]"
    assert float(D.combine([vc, v_no1], 1.0, 1.0, 1, [3.0])) == 3 + 2 * 0.5
    g = D.Guidance.separate(1.0, 2.0, references={2: 4, 1: 3.0})
    assert g.references == ((1, 3.0), (2, 4.0)) and g.n_base == 3 and g.n_branches == 5
    assert D.Guidance.none(references={1: 2}).n_branches == 2 and hash(g)  # frozen, hashable, normalised
    for bad in ({0: 2.0}, {1: -1.0}, {1: float("nan")}, ((1, 2.0), (1, 3.0)), {"1": 2.0}):
        with pytest.raises(D.DiffusionError, match="references"):
            D.Guidance(references=bad)


def test_reference_guidance_pushes_along_one_slot_only():
    m, b = Toy(), make_batch()
    kw = dict(sampler="ddim", steps=4)
    base = _run(m, b, guidance=D.Guidance.cfg(2.0), **kw)
    # w_i = w_c: the extra branch adds exactly nothing
    np.testing.assert_allclose(_run(m, b, guidance=D.Guidance.cfg(2.0, references={2: 2.0}), **kw), base, atol=1e-5)
    pushed = _run(m, b, guidance=D.Guidance.cfg(2.0, references={2: 6.0}), **kw)
    # make_batch fills slot 2 for example 0 only: the others have no [ref#2] to push along, so they do not move
    np.testing.assert_allclose(pushed[1:], base[1:], atol=1e-5)
    assert np.abs(pushed[0] - base[0]).max() > 1e-2
    # the extra branch is the conditional one with that slot masked, all in one batched pass
    bb = {k: jnp.asarray(v) for k, v in b.items()}
    text_all, ctx_all, _ = D._encode(m, bb, 2, (1,))
    x, t = jnp.asarray(np.random.default_rng(1).normal(size=(3, R, R, 3)), jnp.float32), jnp.full((3,), 0.4)
    v_all = m.denoise(jnp.concatenate([x] * 3), jnp.concatenate([t] * 3), text_all, ctx_all)
    mask = b["ctx_mask"].copy()
    mask[:, 1] = False
    np.testing.assert_allclose(v_all[6:], m(x, t, b["text_ids"], b["ctx_image"], b["ctx_ids"], mask), atol=1e-5)
    with pytest.raises(D.DiffusionError, match=r"\[ref#3\].*1\.\.2"):
        _run(m, b, guidance=D.Guidance.cfg(2.0, references={3: 2.0}), **kw)
    with pytest.raises(D.DiffusionError, match="needs context items"):
        _run(Toy(use_context=False), b, guidance=D.Guidance.none(references={1: 2.0}), **kw)


def _run(model, b, **kw):
    kw.setdefault("clip", "static")
    return np.asarray(D.sample(model, b, jax.random.PRNGKey(0), **kw))


def test_guidance_w1_equals_conditional_and_batched_branches_equal_separate_calls():
    m, b = Toy(), make_batch()
    cond = _run(m, b, sampler="ddim", steps=4, guidance=D.Guidance.none())
    np.testing.assert_allclose(_run(m, b, sampler="ddim", steps=4, guidance=D.Guidance.cfg(1.0 + 1e-9)), cond,
                               atol=1e-5)
    # the batched 3-branch pass equals three separate conditional calls mixed by hand
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, R, R, 3)), jnp.float32)
    t = jnp.full((3,), 0.4)
    text_all, ctx_all, _ = D._encode(m, {k: jnp.asarray(v) for k, v in b.items()}, 3)
    v_all = m.denoise(jnp.concatenate([x] * 3), jnp.concatenate([t] * 3), text_all, ctx_all)
    ids0, mask0 = jnp.zeros_like(b["text_ids"]), np.zeros_like(b["ctx_mask"])
    no_ctx = m.encode_context(np.zeros_like(b["ctx_image"]), np.zeros_like(b["ctx_ids"]), mask0)
    v_c = m(x, t, b["text_ids"], b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
    v_u = m.denoise(x, t, m.encode_text(ids0), no_ctx)
    v_t = m.denoise(x, t, m.encode_text(b["text_ids"]), no_ctx)
    np.testing.assert_allclose(v_all, jnp.concatenate([v_c, v_u, v_t]), atol=1e-5)
    assert not np.allclose(v_c, v_t) and not np.allclose(v_c, v_u)  # the branches really differ


def test_oscillating_cond_equals_select_and_differs_from_plain():
    m, b = Toy(), make_batch()
    g = D.Guidance(scale=3.0)
    a = _run(m, b, sampler="ddim", steps=4, guidance=g)
    np.testing.assert_allclose(_run(m, b, sampler="ddim", steps=4, guidance=g, _select=True), a, atol=1e-5)
    assert not np.allclose(a, _run(m, b, sampler="ddim", steps=4, guidance=D.Guidance.cfg(3.0)), atol=1e-3)


# -- samplers ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,steps", [("ddpm", 64), ("ddim", 16), ("dpm", 10)])
def test_perfect_denoiser_recovers_x0(sampler, steps):
    x0 = np.random.default_rng(3).uniform(-0.9, 0.9, (R, R, 3)).astype(np.float32)
    out = _run(Toy(x0=x0), make_batch(), sampler=sampler, steps=steps, guidance=D.Guidance.cfg(5.0))
    np.testing.assert_allclose(out, np.broadcast_to(x0, out.shape), atol=0.02)


def test_deterministic_by_seed_and_per_example_keys():
    m, b = Toy(), make_batch()
    a = _run(m, b, sampler="ddpm", steps=8)
    np.testing.assert_array_equal(a, _run(m, b, sampler="ddpm", steps=8))
    c = np.asarray(D.sample(m, b, jax.random.PRNGKey(1), sampler="ddpm", steps=8, clip="static"))
    assert not np.allclose(a, c)
    # with one key per example, an image does not depend on the rest of its batch
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    full = np.asarray(D.sample(m, b, keys, sampler="ddpm", steps=8, clip="static"))
    one = np.asarray(D.sample(m, {k: v[1:2] for k, v in b.items()}, keys[1:2], sampler="ddpm", steps=8,
                              clip="static"))
    np.testing.assert_allclose(full[1:2], one, atol=1e-5)


def test_intermediates_and_model_without_context():
    m, b = Toy(use_context=False), make_batch()
    x, inter = D.sample(m, b, jax.random.PRNGKey(0), sampler="ddim", steps=6, intermediates_every=2)
    assert x.shape == (3, R, R, 3) and inter.shape == (3, 3, R, R, 3)
    assert float(jnp.abs(x).max()) <= 1.0


def _prims(jaxpr, acc):
    for eqn in jaxpr.eqns:
        acc.add(eqn.primitive.name)
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else [p]):
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    _prims(sub.jaxpr, acc)
                elif hasattr(sub, "eqns"):
                    _prims(sub, acc)
    return acc


def _scan_bodies(jaxpr, out):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append(eqn.params["jaxpr"].jaxpr)
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    _scan_bodies(inner, out)
    return out


@pytest.mark.parametrize("sampler", ["ddpm", "dpm"])
def test_context_encoder_runs_once_outside_the_loop(sampler):
    m, b = Toy(), make_batch()
    calls = []
    enc = m.encode_context
    object.__setattr__(m, "encode_context", lambda *a: calls.append(1) or enc(*a))
    g = D.Guidance.separate(2.0, 3.0, oscillate=True)
    jaxpr = jax.make_jaxpr(lambda: D.sample(m, b, jax.random.PRNGKey(0), sampler=sampler, steps=4, guidance=g,
                                            clip="static"))()
    assert len(calls) == 2  # the conditional context, and the dropped one (both before the loop)
    bodies = _scan_bodies(jaxpr.jaxpr, [])
    body_prims = set().union(*[_prims(bd, set()) for bd in bodies])
    assert bodies and "sort" not in body_prims  # the encoder's op is nowhere in the loop ...
    assert "sort" in _prims(jaxpr.jaxpr, set())  # ... but it is in the program


def test_bad_arguments():
    m, b = Toy(), make_batch()
    with pytest.raises(D.DiffusionError, match="sampler"):
        D.sample(m, b, jax.random.PRNGKey(0), sampler="euler")
    with pytest.raises(D.DiffusionError, match="steps"):
        D.sample(m, b, jax.random.PRNGKey(0), steps=0)
    with pytest.raises(D.DiffusionError, match="guidance"):
        D.sample(m, b, jax.random.PRNGKey(0), guidance=25.0)
    with pytest.raises(D.DiffusionError, match="keys"):
        D.sample(m, b, jax.random.split(jax.random.PRNGKey(0), 2))
