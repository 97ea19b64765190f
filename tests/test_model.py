"""Tests of iimagen.model and iimagen.configs (paper §3.1, App. A.2.1): shapes, masks, identity at birth, gradients.

Most tests use a micro config (16 px, one block per level) so that the file runs in well under a minute on 2 cores.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from iimagen.configs import ConfigError, ModelConfig, get_config
from iimagen.model import (InstructImagen, ModelInputError, attach_context, attend,
                           context_attention, grow, param_count, param_table)

# One width everywhere: few distinct parameter shapes, so few XLA compiles of the initialisers.
MICRO = ModelConfig(name="micro", resolution=16, channels=16, channel_mult=(1, 1), blocks_per_level=1,
                    attn_levels=(1,), head_dim=8, norm_groups=4, text_width=16, text_layers=1, text_len=12,
                    ctx_text_len=8, K=3, vocab_size=64)


def make_batch(cfg, B=2, seed=0):
    rng = np.random.default_rng(seed)
    R, K = cfg.resolution, cfg.K
    ids = rng.integers(1, cfg.vocab_size, (B, cfg.text_len)).astype(np.int32)
    ids[:, 5:] = 0
    cid = rng.integers(1, cfg.vocab_size, (B, K, cfg.ctx_text_len)).astype(np.int32)
    cid[..., 4:] = 0
    return dict(x=jnp.asarray(rng.normal(size=(B, R, R, 3)), jnp.float32), t=jnp.linspace(0.1, 0.9, B),
                text_ids=jnp.asarray(ids), ctx_image=jnp.asarray(rng.uniform(-1, 1, (B, K, R, R, 3)), jnp.float32),
                ctx_ids=jnp.asarray(cid), ctx_mask=jnp.asarray(np.ones((B, K), bool)))


_JIT = {}


def call(model, b, **kw):
    """model(...) jitted through nnx.split/merge (as trainers and samplers do); eager NNX is slow on CPU."""
    b = {**b, **kw}
    key = id(model)
    if key not in _JIT:
        gd, st = nnx.split(model)
        f = jax.jit(lambda s, b: nnx.merge(gd, s)(b["x"], b["t"], b["text_ids"], b["ctx_image"], b["ctx_ids"],
                                                  b["ctx_mask"]))
        _JIT[key] = (model, lambda b: f(st, b))     # keep model alive so id() stays unique
    return _JIT[key][1](b)


_JIT_METHOD = {}


def jit_method(model, fn):
    """`fn(model, *args)` jitted through nnx.split/merge; one compile per (model structure, fn), so a model whose
    weights changed reuses it."""
    gd, st = nnx.split(model)
    if (gd, fn) not in _JIT_METHOD:
        _JIT_METHOD[gd, fn] = jax.jit(lambda s, *a: fn(nnx.merge(gd, s), *a))
    f = _JIT_METHOD[gd, fn]
    return lambda *a: f(st, *a)


def _everything(m, b, mask):
    """Every forward variant the tests look at, in one jitted program (one compile for the whole file)."""
    text = m.encode_text(b["text_ids"])
    ctx = m.encode_context(b["ctx_image"], b["ctx_ids"], mask)
    no_ctx = m.encode_context(b["ctx_image"], b["ctx_ids"], jnp.zeros_like(mask))
    dropped = m.encode_text(jnp.zeros_like(b["text_ids"]))
    return dict(v=m(b["x"], b["t"], b["text_ids"], b["ctx_image"], b["ctx_ids"], mask),
                v_split=m.denoise(b["x"], b["t"], text, ctx), v_no_ctx=m.denoise(b["x"], b["t"], text, no_ctx),
                v_none=m.denoise(b["x"], b["t"], text, None), maps=context_attention(m, b["x"], b["t"], text, ctx),
                text=text, ctx=ctx, dropped=dropped, v_dropped=m.denoise(b["x"], b["t"], dropped, None))


@pytest.fixture(scope="module")
def run(micro):
    f = jit_method(micro, _everything)
    return lambda b, mask=None: f(b, b["ctx_mask"] if mask is None else mask)


@pytest.fixture(scope="module")
def micro():
    model = InstructImagen(MICRO, nnx.Rngs(0))
    # Give the context branch non-zero output projections, as after training, so masks are actually exercised.
    _perturb_ctx_out(model)
    return model


def _perturb_ctx_out(model, seed=1):
    key = jax.random.key(seed)
    for _, m in nnx.iter_graph(model):
        if not isinstance(m, nnx.Module):
            continue
        ctx_attn = getattr(m, "ctx_attn", None)
        if ctx_attn is not None:
            key, sub = jax.random.split(key)
            ctx_attn.out.kernel[...] = 0.2 * jax.random.normal(sub, ctx_attn.out.kernel[...].shape)


def test_shapes_micro_and_tiny(run):
    out = run(make_batch(MICRO))
    T = MICRO.bottleneck_resolution ** 2
    assert out["text"].tokens.shape == (2, MICRO.text_len, MICRO.text_width)
    assert out["text"].pooled.shape == (2, MICRO.text_width)
    assert out["ctx"].tokens.shape == (2, MICRO.K * T, MICRO.level_channels[-1])
    assert out["ctx"].mask.shape == (2, MICRO.K * T)
    assert out["v"].shape == (2, 16, 16, 3) and out["v"].dtype == jnp.float32
    # tiny abstractly (its real forward runs in notebooks/03_model).
    cfg = get_config("tiny")
    model = nnx.eval_shape(lambda: InstructImagen(cfg, nnx.Rngs(0)))
    gd, st = nnx.split(model)
    b = make_batch(cfg)
    out = jax.eval_shape(lambda s, b: _everything(nnx.merge(gd, s), b, b["ctx_mask"]), st, b)
    assert out["ctx"].tokens.shape == (2, cfg.K * 64, cfg.level_channels[-1]) and out["v"].shape == (2, 32, 32, 3)


@pytest.mark.parametrize("name", ["small", "base"])
def test_shapes_large_configs_abstractly(name):
    n = param_count(get_config(name))
    assert (30e6 if name == "small" else 100e6) < n < (100e6 if name == "small" else 400e6), n
    # The forward pass abstractly; base with 2 blocks per level (same levels and widths) to keep tracing quick.
    cfg = get_config(name, blocks_per_level=2) if name == "base" else get_config(name)
    model = nnx.eval_shape(lambda: InstructImagen(cfg, nnx.Rngs(0)))
    gd, st = nnx.split(model)
    R, K, B = cfg.resolution, cfg.K, 2
    S = jax.ShapeDtypeStruct
    out = jax.eval_shape(lambda s, x, t, i, ci, cid, cm: nnx.merge(gd, s)(x, t, i, ci, cid, cm), st,
                         S((B, R, R, 3), jnp.float32), S((B,), jnp.float32), S((B, cfg.text_len), jnp.int32),
                         S((B, K, R, R, 3), jnp.float32), S((B, K, cfg.ctx_text_len), jnp.int32), S((B, K), bool))
    assert out.shape == (B, R, R, 3) and out.dtype == jnp.float32


def test_flops_are_counted_on_the_lowered_program_and_add_up():
    from iimagen.model import flops_breakdown
    from iimagen.model.unet import xla_flops

    S = jax.ShapeDtypeStruct
    mm = jax.jit(lambda a, b: a @ b).lower(S((64, 48), jnp.float32), S((48, 32), jnp.float32))
    assert xla_flops(mm) == 2 * 64 * 48 * 32                     # a matmul: exactly 2 M K N
    f = flops_breakdown(MICRO)
    assert 0 < f["denoise_t2i"] < f["denoise"] < f["call"]       # the context adds its cross-attention to a step
    assert f["denoise"] + f["encode_context"] < f["call"] < 1.5 * (f["denoise"] + f["encode_context"])
    # the lowered count (no backend compile) agrees with the compiled program's
    gd, st = nnx.split(nnx.eval_shape(lambda: InstructImagen(MICRO, nnx.Rngs(0))))
    R = MICRO.resolution
    lo = jax.jit(lambda s, x, t, i: nnx.merge(gd, s)(x, t, i)).lower(
        st, S((1, R, R, 3), jnp.float32), S((1,), jnp.float32), S((1, MICRO.text_len), jnp.int32))
    assert xla_flops(lo) == pytest.approx(xla_flops(lo.compile()), rel=0.01)


def test_tiny_param_budget():
    table = param_table(get_config("tiny"))
    assert 1.5e6 < table["total"] < 6e6
    assert table["total"] == sum(v for k, v in table.items() if k != "total")
    assert 0 < table["context cross-attention"] < 0.2 * table["total"]


def test_padded_slot_changes_nothing(run):
    b = make_batch(MICRO)
    mask = jnp.array([[True, True, False], [True, False, False]])
    out = run(b, mask)
    # Anything in the padded slots (pixels and ids) must be ignored.
    noisy = b["ctx_image"].at[0, 2].set(0.9).at[1, 1:].set(-0.7)
    ids = b["ctx_ids"].at[0, 2].set(7).at[1, 1:].set(0)
    out2 = run({**b, "ctx_image": noisy, "ctx_ids": ids}, mask)
    np.testing.assert_array_equal(np.asarray(out["v"]), np.asarray(out2["v"]))
    # ...while the filled slots do matter (the test would pass trivially otherwise).
    out3 = run({**b, "ctx_image": b["ctx_image"].at[0, 0].set(0.5)}, mask)
    assert float(jnp.abs(out3["v"] - out["v"])[0].max()) > 1e-4
    assert float(jnp.abs(out["v"] - out["v_none"]).max()) > 1e-4


def test_no_context_row_equals_ctx_none(run):
    """An all-False ctx_mask row ("no context") gives the output of ctx=None: the context branch adds exactly zero.
    Up to float rounding only: the two paths are separate parts of one XLA program, and on some CPUs (AVX-512 hosts)
    XLA fuses them differently (1.3e-6 seen); the context branch, when not masked, moves the output by > 1e-4."""
    out = run(make_batch(MICRO))
    np.testing.assert_allclose(np.asarray(out["v_no_ctx"]), np.asarray(out["v_none"]), rtol=0, atol=1e-5)


def test_identity_at_birth():
    t2i = InstructImagen(dataclasses.replace(MICRO, use_context=False), nnx.Rngs(0))
    b = make_batch(MICRO)
    model = attach_context(t2i, nnx.Rngs(5))
    assert model.cfg.use_context and param_count(model) > param_count(t2i)
    # Under jit through split/merge, the way samplers and trainers call it.
    gd, st = nnx.split(model)
    f = jax.jit(lambda s, b: nnx.merge(gd, s)(b["x"], b["t"], b["text_ids"], b["ctx_image"], b["ctx_ids"],
                                              b["ctx_mask"]))
    gd0, st0 = nnx.split(t2i)
    f0 = jax.jit(lambda s, b: nnx.merge(gd0, s)(b["x"], b["t"], b["text_ids"]))
    np.testing.assert_array_equal(np.asarray(f(st, b)), np.asarray(f0(st0, b)))
    with pytest.raises(ModelInputError, match="use_context"):
        t2i.encode_context(b["ctx_image"], b["ctx_ids"], b["ctx_mask"])


def test_input_skip_starts_at_identity_and_carries_full_resolution():
    """attach_context(..., input_skip=True) adds the zero-initialised full-resolution skip: outputs stay bit-equal,
    and the skip still learns (non-zero gradient at zero) and acts once non-zero."""
    t2i = InstructImagen(dataclasses.replace(MICRO, use_context=False), nnx.Rngs(0))
    b = make_batch(MICRO)
    model = attach_context(t2i, nnx.Rngs(5), input_skip=True)
    assert model.cfg.input_skip and float(jnp.abs(model.input_skip.kernel.value).max()) == 0.0
    gd, st = nnx.split(model)
    # The batch is an argument, not a closed-over constant, in both programs: XLA folds constants differently and
    # the comparison must be bit-exact. Jitted (eager NNX is slow on CPU); called again below with changed weights.
    out = lambda s, b: nnx.merge(gd, s)(b["x"], b["t"], b["text_ids"], b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
    f = jax.jit(out)
    f0 = jit_method(t2i, lambda m, b: m(b["x"], b["t"], b["text_ids"]))
    np.testing.assert_array_equal(np.asarray(f(st, b)), np.asarray(f0(b)))
    # It learns from zero: the loss has a non-zero gradient on its kernel, and a non-zero kernel changes the output.
    grads = jax.jit(jax.grad(lambda s, b: jnp.mean(out(s, b) ** 2)))(st, b)
    assert float(jnp.abs(grads["input_skip"]["kernel"].value).max()) > 1e-6
    st["input_skip"]["kernel"].value = 0.5 * jnp.eye(MICRO.channels)[None, None]
    assert float(jnp.abs(f(st, b) - f0(b)).max()) > 1e-3
    with pytest.raises(ModelInputError, match="only parts that start at identity"):
        attach_context(t2i, nnx.Rngs(5), channels=8)


def test_context_query_position_aligns_at_birth_and_keeps_identity():
    """attach_context(..., ctx_query_pos=True): the output is still bit-equal to the text-to-image model's; the key
    projection starts equal to the query projection and the queries carry the tokens' 2-D position, so each query's
    attention peaks on the context token at its own place (it does not without ctx_query_pos); once the branch is
    live the query position changes the output. It can only be chosen when the branch is attached."""
    t2i = InstructImagen(dataclasses.replace(MICRO, use_context=False), nnx.Rngs(0))
    b = make_batch(MICRO)
    fwd = lambda m, b: m(b["x"], b["t"], b["text_ids"], b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
    f0 = jit_method(t2i, lambda m, b: m(b["x"], b["t"], b["text_ids"]))
    r, T = MICRO.bottleneck_resolution, MICRO.ctx_tokens_per_image

    def middle_attention(model, b):
        text = model.encode_text(b["text_ids"])
        ctx = model.encode_context(b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
        return context_attention(model, b["x"], b["t"], text, ctx)["middle"]     # [B, heads, r*r, K*T]

    def own_place_weight(model):
        w = jit_method(model, middle_attention)(b)
        return float(jnp.mean(jnp.diagonal(w[..., :T], axis1=2, axis2=3)))      # slot 0, token under the query

    aligned = attach_context(t2i, nnx.Rngs(5), ctx_query_pos=True)
    plain = attach_context(t2i, nnx.Rngs(5), ctx_query_pos=False)
    np.testing.assert_array_equal(np.asarray(jit_method(aligned, fwd)(b)), np.asarray(f0(b)))
    a = aligned.middle.ctx_attn
    np.testing.assert_array_equal(np.asarray(a.kv.kernel.value[:, :MICRO.channels]), np.asarray(a.q.kernel.value))
    uniform = 1.0 / (MICRO.K * T)
    assert own_place_weight(aligned) > 3 * uniform and own_place_weight(plain) < 1.5 * uniform
    # Live branch: dropping the query position (same weights otherwise) changes the output.
    for blk in [aligned.middle] + [x for lv in aligned.encoder for x in lv.blocks] + \
               [x for lv in aligned.decoder for x in lv.blocks]:
        if blk.ctx_attn is not None:
            blk.ctx_attn.out.kernel.value = 0.3 * jnp.eye(MICRO.channels)
    without = nnx.merge(*nnx.split(aligned))
    without.cfg = dataclasses.replace(aligned.cfg, ctx_query_pos=False)
    assert float(jnp.abs(jit_method(aligned, fwd)(b) - jit_method(without, fwd)(b)).max()) > 1e-3
    with pytest.raises(ModelInputError, match="together with use_context"):
        grow(plain, nnx.Rngs(6), ctx_query_pos=True)


def test_content_reader_grown_at_identity_ignores_the_query_position():
    """grow(..., ctx_content_attn=True) on an aligned context model (how a world-v1 checkpoint gets the second reader):
    outputs stay bit-equal and the new reader learns from zero; its attention weights do not depend on the query
    position code (the aligned attention's do). A retired switch stored off still loads; stored on, it is an error."""
    t2i = InstructImagen(dataclasses.replace(MICRO, use_context=False), nnx.Rngs(0))
    b = make_batch(MICRO)
    aligned = attach_context(t2i, nnx.Rngs(5), ctx_query_pos=True)
    model = grow(aligned, nnx.Rngs(6), ctx_content_attn=True)
    assert model.cfg.ctx_content_attn and not aligned.cfg.ctx_content_attn
    fwd = lambda m, b: m(b["x"], b["t"], b["text_ids"], b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
    np.testing.assert_array_equal(np.asarray(jit_method(model, fwd)(b)), np.asarray(jit_method(aligned, fwd)(b)))
    fresh = model
    for blk in [aligned.middle] + [x for lv in aligned.encoder for x in lv.blocks]:
        if blk.ctx_attn is not None:   # a live aligned branch, so the context tokens reach the loss
            blk.ctx_attn.out.kernel.value = 0.3 * jnp.eye(MICRO.channels)
    model = grow(aligned, nnx.Rngs(6), ctx_content_attn=True)
    gd, st = nnx.split(model)
    grads = jax.jit(jax.grad(lambda s, b: jnp.mean(fwd(nnx.merge(gd, s), b) ** 2)))(st, b)
    assert float(jnp.abs(grads["middle"]["ctx_content"]["out"]["kernel"].value).max()) > 1e-6
    # The content attention ignores the query position; the aligned one does not (same weights otherwise; every
    # context output still zero, so nothing upstream of a block depends on the query position either).
    def weights(m, b):
        text, ctx = m.encode_text(b["text_ids"]), m.encode_context(b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
        w = context_attention(m, b["x"], b["t"], text, ctx)
        return w["DBlock-2.1"], w["DBlock-2.1 content"]
    without = nnx.merge(*nnx.split(fresh))
    without.cfg = dataclasses.replace(fresh.cfg, ctx_query_pos=False)
    (a1, c1), (a0, c0) = jit_method(fresh, weights)(b), jit_method(without, weights)(b)
    assert float(jnp.abs(a1 - a0).max()) > 1e-3
    np.testing.assert_allclose(np.asarray(c1), np.asarray(c0), atol=1e-6)
    stored = json.loads(MICRO.to_json())
    assert ModelConfig.from_dict({**stored, "ctx_patch": False}) == MICRO
    with pytest.raises(ConfigError, match="ctx_patch=True: this switch was retired"):
        ModelConfig.from_dict({**stored, "ctx_patch": True})


def test_gradients_reach_shared_encoder_through_context(micro):
    """A loss on the context tokens alone has non-zero gradients on the shared encoder and text encoder weights
    (that the denoiser's output depends on the context tokens is test_padded_slot_changes_nothing's last check)."""
    b = make_batch(MICRO)
    gd, st = nnx.split(micro)

    def loss_ctx(s):
        ctx = nnx.merge(gd, s).encode_context(b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
        return jnp.sum(ctx.tokens ** 2)

    g = jax.jit(jax.grad(loss_ctx))(st)
    total = lambda a: float(jnp.abs(a.value if hasattr(a, "value") else a).sum())
    assert total(g["encoder"][0]["down"]["conv"]["kernel"]) > 0
    assert total(g["conv_in"]["kernel"]) > 0
    assert total(g["text_encoder"]["embed"]["embedding"]) > 0
    assert total(g["decoder"][0]["up"]["conv"]["kernel"]) == 0       # not on the context path


def test_packed_context_slots_equal_the_full_pass(micro):
    """encode_context(capacity=c) encodes the used slots only (the train step's speed-up), and their texts may stop at
    their last token, yet the denoiser's output
    and the gradients of a loss on it equal the full pass's: empty slots are masked out of every context attention.
    A capacity below the number of used slots loses one, which is why the loop never passes less."""
    b = make_batch(MICRO, B=3)
    b["ctx_mask"] = jnp.asarray([[True, False, False], [False, False, False], [True, True, False]])
    gd, st = nnx.split(micro)

    def loss(s, cap):
        v = nnx.merge(gd, s)(b["x"], b["t"], b["text_ids"], b["ctx_image"], b["ctx_ids"], b["ctx_mask"],
                             ctx_capacity=cap)
        return jnp.mean(v ** 2), v

    f = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, v_full), g_full = f(st, None)
    (_, v_pack), g_pack = f(st, 4)          # 3 used slots of 9, encoded in 4 rows
    np.testing.assert_allclose(np.asarray(v_pack), np.asarray(v_full), rtol=0, atol=1e-5)
    for a, c in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_pack)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-6)
    # context texts cut after their last token (what the loop does): the same output
    b_cut = {**b, "ctx_ids": b["ctx_ids"][..., :4]}
    v_cut = jax.jit(lambda s: nnx.merge(gd, s)(b["x"], b["t"], b["text_ids"], b["ctx_image"], b_cut["ctx_ids"],
                                               b["ctx_mask"], ctx_capacity=4))(st)
    np.testing.assert_allclose(np.asarray(v_cut), np.asarray(v_full), rtol=0, atol=1e-5)
    (_, v_short), _ = f(st, 2)              # the third used slot is dropped: example 2 changes
    assert float(jnp.abs(v_short - v_full)[2].max()) > 1e-4
    np.testing.assert_allclose(np.asarray(v_short[:2]), np.asarray(v_full[:2]), rtol=0, atol=1e-5)


def test_bf16_forward_finite_and_close(run):
    m16 = InstructImagen(dataclasses.replace(MICRO, dtype="bfloat16"), nnx.Rngs(0))
    _perturb_ctx_out(m16)                                   # now the same parameters as `micro`
    b = make_batch(MICRO)
    v32, v16 = run(b)["v"], call(m16, b)
    assert v16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v16)))
    assert float(jnp.abs(v16 - v32).mean()) < 0.05 * float(jnp.abs(v32).mean()) + 1e-3


def test_deterministic(run):
    b = make_batch(MICRO)
    o1, o2 = run(b), run(b)
    np.testing.assert_array_equal(np.asarray(o1["v"]), np.asarray(o2["v"]))
    # The split encode_text / encode_context / denoise path (what samplers run) gives the same as __call__.
    np.testing.assert_allclose(np.asarray(o1["v_split"]), np.asarray(o1["v"]), atol=1e-6)


def test_attend_all_masked_is_zero_and_paths_agree():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(2, 5, 2, 8), (2, 7, 2, 8), (2, 7, 2, 8)])
    mask = jnp.array([[False] * 7, [True, True, False, True, False, False, False]])
    out = attend(q, k, v, mask)
    assert float(jnp.abs(out[0]).max()) == 0.0 and float(jnp.abs(out[1]).max()) > 0
    out_w, w = attend(q, k, v, mask, return_weights=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(out_w), atol=1e-5)
    np.testing.assert_allclose(np.asarray(w[1].sum(-1)), 1.0, atol=1e-6)
    assert float(jnp.abs(w[1][..., 2]).max()) == 0.0
    # Reference: plain softmax attention over the unmasked keys of row 1.
    keep = np.asarray(mask[1])
    logits = np.einsum("qhd,shd->hqs", q[1], k[1][keep]) / np.sqrt(8)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out[1]), np.einsum("hqs,shd->qhd", p, v[1][keep]), atol=1e-5)


def test_dropped_text_is_valid_condition(run):
    out = run(make_batch(MICRO))
    assert not bool(out["dropped"].mask.any()) and float(jnp.abs(out["dropped"].pooled).max()) == 0.0
    assert bool(jnp.all(jnp.isfinite(out["v_dropped"])))


def test_context_attention_weights(run):
    mask = jnp.array([[True, False, True], [False, False, False]])
    maps = run(make_batch(MICRO), mask)["maps"]
    T = MICRO.bottleneck_resolution ** 2
    assert sorted(maps) == ["DBlock-2.1", "UBlock-2.1", "middle"]
    w = maps["DBlock-2.1"]
    assert w.shape == (2, MICRO.level_channels[-1] // MICRO.head_dim, T, 3 * T)
    np.testing.assert_allclose(np.asarray(w[0].sum(-1)), 1.0, atol=1e-5)
    assert float(w[0][..., T:2 * T].max()) == 0.0 and float(jnp.abs(w[1]).max()) == 0.0


def test_config_json_round_trip_and_errors():
    for name in ("tiny", "small", "base"):
        cfg = get_config(name)
        d = json.loads(json.dumps(dataclasses.asdict(cfg)))
        assert ModelConfig(**d) == cfg and ModelConfig.from_json(cfg.to_json()) == cfg
    assert get_config("tiny", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ConfigError, match="dtype"):
        get_config("tiny", dtype="float16")
    with pytest.raises(ConfigError, match="unknown config"):
        get_config("huge")
    with pytest.raises(ConfigError, match="attn_levels"):
        get_config("tiny", attn_levels=(0,))
    with pytest.raises(ValueError, match="no field"):
        get_config("tiny", widht=3)


def test_bad_inputs_raise_clear_errors(micro):
    b = make_batch(MICRO)
    with pytest.raises(ModelInputError, match="x_t"):
        micro(b["x"][:, :8], b["t"], b["text_ids"])
    with pytest.raises(ModelInputError, match="ctx_image"):
        micro.encode_context(b["ctx_image"][:, :2], b["ctx_ids"], b["ctx_mask"])
    with pytest.raises(ModelInputError, match="all of"):
        micro(b["x"], b["t"], b["text_ids"], ctx_image=b["ctx_image"])


def test_named_configs_read_by_place_and_by_content_from_birth():
    """Every named config holds both context readers (issue "the chain that reads references"): the aligned one
    (`ctx_query_pos`) and the position-free one (`ctx_content_attn`). A stage-0 model of such a config gets both when
    its context branch is attached, each with zero output, so the outputs are bit-equal to the text-to-image
    model's; both then learn (non-zero gradients on both output projections once the tokens reach the loss)."""
    from iimagen.configs import CONFIGS, get_config

    for name in CONFIGS:
        cfg = get_config(name)
        assert cfg.ctx_query_pos and cfg.ctx_content_attn, name
    both = dataclasses.replace(MICRO, use_context=False, ctx_query_pos=True, ctx_content_attn=True)
    t2i = InstructImagen(both, nnx.Rngs(0))
    model = attach_context(t2i, nnx.Rngs(5))
    blocks = [model.middle] + [x for lv in model.encoder for x in lv.blocks] + \
             [x for lv in model.decoder for x in lv.blocks]
    readers = [(blk.ctx_attn, blk.ctx_content) for blk in blocks if blk.ctx_attn is not None]
    assert readers and all(c is not None for _, c in readers)
    assert all(float(jnp.abs(r.out.kernel.value).max()) == 0.0 for pair in readers for r in pair)
    b = make_batch(MICRO)
    fwd = lambda m, b: m(b["x"], b["t"], b["text_ids"], b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
    f0 = jit_method(t2i, lambda m, b: m(b["x"], b["t"], b["text_ids"]))
    np.testing.assert_array_equal(np.asarray(jit_method(model, fwd)(b)), np.asarray(f0(b)))
    gd, st = nnx.split(model)
    grads = jax.jit(jax.grad(lambda s, b: jnp.mean(fwd(nnx.merge(gd, s), b) ** 2)))(st, b)
    for reader in ("ctx_attn", "ctx_content"):
        assert float(jnp.abs(grads["middle"][reader]["out"]["kernel"].value).max()) > 1e-6, reader
