"""Instruct-Imagen's denoiser: an Imagen UNet whose lowest-resolution blocks also attend to the multi-modal context,
encoded by the UNet's **own** down-sampling encoder (paper §3.1, App. A.2.1, Fig. 3, Table 5).

    "we first encode each multi-modal context with the down-sampling encoder of the UNet (shared weights), conditioned
     on the T5 embedding of its text. The features of the final layer become the (key, value) of a new
     cross-attention layer, added to each DBlock/UBlock after the text cross-attention."   (paraphrase of §3.1/A.2.1)

Layout (Imagen's Efficient UNet with `numResNetBlocksPerBlock=1`, several blocks per resolution; Table 5):

    x_t --conv_in--> [level 0: down x2, n x Block] -> ... -> [level L-1: down x2, n x Block(+attn)]   (encoder)
                     -> middle Block(+attn)
                     -> [level L-1: n x Block(+attn) on concat(skip), up x2] -> ... -> [level 0 ...] -> conv_out -> v

    Block = ResBlock(FiLM from time + pooled text)  [+ self-attn + text cross-attn + context cross-attn]

The context cross-attention starts with a zero output projection, so a freshly attached context branch leaves the
stage-0 text-to-image model's output unchanged to the last bit (`attach_context`).

`cfg.ctx_query_pos` (the kit's addition; the paper does not say how context tokens are placed) gives the context
cross-attention's queries the same 2-D position code as the context tokens and starts its key projection equal to
its query projection, so a query starts out attending to the context tokens at its own place. Without it, the
queries (conv features) carry almost no absolute position and a spatial control cannot be read pixel-to-pixel:
the branch stayed unused through the shipped chain's stage 1 and 600 stage-2 steps (docs/experiments/2026-11-26-aligned-context-attention.md).

Subjects and styles need the opposite: reading a reference by content, wherever it shows the subject. So every
context block holds two readers (`cfg.ctx_content_attn`, on in the named configs): the aligned attention above and a
second context cross-attention whose queries carry no position code, both with zero output at birth, so one model
learns to follow control maps and subject or style references from stage 1 on. (The shipped world-v1 checkpoints
predate it: all but `instruct-imagen-two-readers-tiny` have the aligned reader only.)
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from iimagen.configs import ModelConfig, get_config
from .layers import Attention, Downsample, ResBlock, Upsample, module_list, sinusoidal_embedding, variable_value
from .text import TextEncoder, TextFeatures


class ModelInputError(ValueError):
    """An input array has the wrong shape or is missing; the message names the argument and the fix."""


POS_RMS = 0.7  # initial rms per axis of the context's 2-D position code when it also drives the queries


class ContextFeatures(NamedTuple):
    """Encoded multi-modal context: `tokens` [B, K*T, C] (T = tokens per context image), `mask` [B, K*T] (bool)."""

    tokens: jax.Array
    mask: jax.Array


def _dtype(cfg):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class Block(nnx.Module):
    """One DBlock/UBlock of Table 5: one ResNet block, then (at attention levels) self-attention, text
    cross-attention, and the new context cross-attention after the text one (zero-initialised output)."""

    def __init__(self, cin, cout, emb_dim, cfg: ModelConfig, *, attn: bool, rngs: nnx.Rngs):
        dt = _dtype(cfg)
        self.res = ResBlock(cin, cout, emb_dim, groups=cfg.norm_groups, dropout=cfg.dropout, dtype=dt, rngs=rngs)
        heads = cout // cfg.head_dim
        g = cfg.norm_groups
        self.self_attn = Attention(cout, heads, norm_groups=g, dtype=dt, rngs=rngs) if attn else None
        self.text_attn = Attention(cout, heads, kv_dim=cfg.text_width, norm_groups=g, dtype=dt,
                                   rngs=rngs) if attn else None
        ctx_dim = cfg.level_channels[-1]
        self.ctx_attn = (Attention(cout, heads, kv_dim=ctx_dim, norm_groups=g, zero_init=True, dtype=dt, rngs=rngs)
                         if attn and cfg.use_context else None)
        # Content reading (cfg.ctx_content_attn, the kit's addition): a second context cross-attention whose queries
        # carry no position code and whose keys are not tied to them, so it starts out looking over the whole
        # reference and can learn to find a subject wherever the reference shows it. Zero output at birth.
        self.ctx_content = (Attention(cout, heads, kv_dim=ctx_dim, norm_groups=g, zero_init=True, dtype=dt, rngs=rngs)
                            if attn and cfg.use_context and cfg.ctx_content_attn else None)
        if self.ctx_attn is not None and cfg.ctx_query_pos and ctx_dim == cout:
            # Aligned at birth: with the key projection equal to the query projection, q_ij . k_ij holds the
            # position term |W (row_i + col_j)|^2, so each query starts out reading the context tokens under it
            # (what a spatial control needs); subject and style contexts train it away from there.
            a = self.ctx_attn
            a.kv.kernel[...] = a.kv.kernel[...].at[:, :cout].set(a.q.kernel[...])

    def __call__(self, x, emb, text: TextFeatures, ctx: ContextFeatures | None, name="", probe=None, q_pos=None):
        x = self.res(x, emb)
        if self.self_attn is not None:
            B, H, W, C = x.shape
            h = x.reshape(B, H * W, C)                     # the feature map as H*W tokens
            h = self.self_attn(h)
            h = self.text_attn(h, text.tokens, text.mask)
            if self.ctx_attn is not None and ctx is not None:
                qp = q_pos if q_pos is not None and q_pos.shape == (H * W, C) else None  # the context's own grid
                # the aligned context attention, then (cfg.ctx_content_attn) the one without position codes
                for attn, label, pos in ((self.ctx_attn, name, qp), (self.ctx_content, f"{name} content", None)):
                    if attn is None:
                        continue
                    if probe is not None and "ctx_attn" in probe:
                        h, w = attn(h, ctx.tokens, ctx.mask, return_weights=True, q_pos=pos)
                        probe["ctx_attn"].append((label, w))
                    else:
                        h = attn(h, ctx.tokens, ctx.mask, q_pos=pos)
            x = h.reshape(B, H, W, C)
        if probe is not None and "shapes" in probe:
            probe["shapes"].append((name, tuple(x.shape)))
        return x


class DownLevel(nnx.Module):
    """DBlock level: a stride-2 down-sampling conv, then `blocks_per_level` Blocks; each Block's output is a skip."""

    def __init__(self, cin, cout, emb_dim, cfg, *, attn, rngs):
        self.down = Downsample(cin, cout, dtype=_dtype(cfg), rngs=rngs)
        self.blocks = module_list([Block(cout, cout, emb_dim, cfg, attn=attn, rngs=rngs)
                                   for _ in range(cfg.blocks_per_level)])


class UpLevel(nnx.Module):
    """UBlock level: `blocks_per_level` Blocks, each on concat(h, skip), then nearest x2 up-sampling + conv."""

    def __init__(self, c, cout, emb_dim, cfg, *, attn, rngs):
        self.blocks = module_list([Block(2 * c, c, emb_dim, cfg, attn=attn, rngs=rngs)
                                   for _ in range(cfg.blocks_per_level)])
        self.up = Upsample(c, cout, dtype=_dtype(cfg), rngs=rngs)


class InstructImagen(nnx.Module):
    """The Instruct-Imagen denoiser (v-prediction). See docs/contracts.md ("Model") for the calls.

    `cfg.use_context=False` builds the stage-0 text-to-image model; `attach_context` turns it into this model with
    the context branch at identity.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        if isinstance(cfg, str):
            cfg = get_config(cfg)
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.cfg = cfg
        dt = _dtype(cfg)
        c0, chans, L = cfg.channels, cfg.level_channels, cfg.levels
        emb = 4 * c0
        lin = dict(dtype=dt, param_dtype=jnp.float32, rngs=rngs)
        # Shared text encoder (instruction and context texts).
        self.text_encoder = TextEncoder(cfg.vocab_size, cfg.text_width, cfg.text_layers,
                                        max(cfg.text_len, cfg.ctx_text_len), cfg.head_dim, dtype=dt, rngs=rngs)
        # Conditioning vector: MLP(sinusoidal(1000 t)) + Linear(pooled text), fed to every ResBlock as FiLM.
        self.time_fc1 = nnx.Linear(c0, emb, **lin)
        self.time_fc2 = nnx.Linear(emb, emb, **lin)
        self.text_pool = nnx.Linear(cfg.text_width, emb, **lin)
        self.conv_in = nnx.Conv(3, c0, (3, 3), **lin)
        # Down-sampling encoder: used for x_t and (shared weights) for every context image.
        self.encoder = module_list([DownLevel(chans[l - 1] if l else c0, chans[l], emb, cfg,
                                              attn=l in cfg.attn_levels, rngs=rngs) for l in range(L)])
        self.middle = Block(chans[-1], chans[-1], emb, cfg, attn=True, rngs=rngs)
        # Up-sampling decoder, lowest level first.
        self.decoder = module_list([UpLevel(chans[l], chans[l - 1] if l else c0, emb, cfg,
                                            attn=l in cfg.attn_levels, rngs=rngs) for l in reversed(range(L))])
        # Full-resolution skip (the kit's addition, off in the paper's layout): every Efficient-UNet level starts
        # with a stride-2 down-sampling, so nothing but the input conv sees x_t at full resolution and the output
        # head must guess per-pixel noise from half-resolution features. A zero-initialised 1x1 conv from the input
        # conv's features into the head fixes that, and leaves a model it is added to unchanged (identity at birth).
        if cfg.input_skip:
            self.input_skip = nnx.Conv(c0, c0, (1, 1), kernel_init=nnx.initializers.zeros, **lin)
        self.out_norm = nnx.GroupNorm(c0, num_groups=cfg.norm_groups, dtype=jnp.float32, rngs=rngs)
        self.out_conv = nnx.Conv(c0, 3, (3, 3), **lin)
        if cfg.use_context:
            # Context tokens: LayerNorm(bottleneck features) + slot embedding (which k) + 2-D position (row + col).
            # With cfg.ctx_query_pos the same 2-D position is also added to the context cross-attention's queries
            # (see Block), and it starts at rms POS_RMS per axis so that it is the alignment signal from the start.
            cL, r = chans[-1], cfg.bottleneck_resolution
            init = lambda scale, *shape: nnx.Param(scale * jax.random.normal(rngs.params(), shape, jnp.float32))
            pos = POS_RMS if cfg.ctx_query_pos else 0.02
            self.ctx_norm = nnx.LayerNorm(cL, dtype=jnp.float32, rngs=rngs)
            self.ctx_slot = init(0.02, cfg.K, cL)
            self.ctx_row = init(pos, r, cL)
            self.ctx_col = init(pos, r, cL)

    # ---- conditioning --------------------------------------------------------------------------------------------
    def encode_text(self, text_ids) -> TextFeatures:
        """Instruction text ids [B, L] (pad 0) -> TextFeatures(tokens [B, L, D], mask [B, L], pooled [B, D])."""
        text_ids = jnp.asarray(text_ids)
        if text_ids.ndim != 2:
            raise ModelInputError(f"text_ids has shape {text_ids.shape}; expected [B, text_len] int32 token ids")
        return self.text_encoder(text_ids)

    def _embed(self, t, text: TextFeatures):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), text.pooled.shape[:1])
        e = self.time_fc2(nnx.swish(self.time_fc1(sinusoidal_embedding(t, self.cfg.channels))))
        return (e + self.text_pool(text.pooled)).astype(jnp.float32)

    # ---- the two halves of the UNet ------------------------------------------------------------------------------
    def _query_pos(self, ctx):
        """[r*r, C]: the context tokens' 2-D position code on the bottleneck grid, for the context cross-attention's
        queries (cfg.ctx_query_pos), or None."""
        if ctx is None or not self.cfg.ctx_query_pos:
            return None
        r, C = self.ctx_row[...].shape
        return (self.ctx_row[...][:, None, :] + self.ctx_col[...][None, :, :]).reshape(r * r, C)

    def _encode(self, x, emb, text, ctx, probe=None, q_pos=None):
        """The down-sampling encoder: returns the lowest-resolution feature map and the skips (the first skip is the
        input conv's full-resolution features, used by the output head when cfg.input_skip). `q_pos`:
        `_query_pos(ctx)`, computed once per call by `denoise`."""
        h = self.conv_in(x.astype(_dtype(self.cfg)))
        skips = [h]
        for l, level in enumerate(self.encoder):
            h = level.down(h)
            for i, block in enumerate(level.blocks):
                h = block(h, emb, text, ctx, f"DBlock-{l + 1}.{i + 1}", probe, q_pos)
                skips.append(h)
        return h, skips

    def _decode(self, h, skips, emb, text, ctx, probe=None, q_pos=None):
        L = self.cfg.levels
        for j, level in enumerate(self.decoder):
            for i, block in enumerate(level.blocks):
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb, text, ctx, f"UBlock-{L - j}.{i + 1}",
                          probe, q_pos)
            h = level.up(h)
        h0 = skips.pop()
        if self.cfg.input_skip:
            h = h + self.input_skip(h0)
        return self.out_conv(nnx.swish(self.out_norm(h)).astype(_dtype(self.cfg))).astype(jnp.float32)

    # ---- context encoding (paper §3.1): once per sample, never inside the step loop ------------------------------
    def encode_context(self, ctx_image, ctx_ids, ctx_mask, capacity: int | None = None) -> ContextFeatures:
        """[B, K, R, R, 3] images, [B, K, ctx_text_len] ids, [B, K] mask -> ContextFeatures([B, K*T, C], [B, K*T]).

        All B*K context images go through the **same** down-sampling encoder as x_t in one batched call, clean
        (t = 0: the kit's choice; the paper does not say), each conditioned on its own `[ref#k] + text` (the shared
        text encoder), and *without* context attention inside that pass. The last encoder feature map [h, w, C] is
        flattened to T = h*w tokens, given a slot embedding for k and a 2-D position embedding, and masked by slot.

        `capacity` (static; the training loop's speed-up): encode only the used slots, gathered into `capacity` rows,
        and leave the features of empty slots at zero. Masked tokens are never attended to, so the outputs equal the
        unpacked ones; a used slot beyond `capacity` would be lost, so the caller passes at least `ctx_mask.sum()`.
        A stage-2 batch uses 1.2 of its K = 3 slots on average: the full pass spends most of its work on padding.
        """
        cfg = self.cfg
        if not cfg.use_context:
            raise ModelInputError("encode_context: this is a text-to-image model (cfg.use_context=False); "
                                  "build the context model with attach_context(model, rngs)")
        ctx_image, ctx_ids, ctx_mask = jnp.asarray(ctx_image), jnp.asarray(ctx_ids), jnp.asarray(ctx_mask)
        R = cfg.resolution
        if ctx_image.ndim != 5 or ctx_image.shape[1] != cfg.K or ctx_image.shape[2:] != (R, R, 3):
            raise ModelInputError(f"ctx_image has shape {ctx_image.shape}; expected [B, K={cfg.K}, {R}, {R}, 3] "
                                  f"(resize context images to the model's resolution, pad to K slots)")
        B = ctx_image.shape[0]
        if ctx_ids.ndim != 3 or ctx_ids.shape[:2] != (B, cfg.K):
            raise ModelInputError(f"ctx_ids has shape {ctx_ids.shape}; expected [B={B}, K={cfg.K}, ctx_text_len]")
        if ctx_mask.shape != (B, cfg.K):
            raise ModelInputError(f"ctx_mask has shape {ctx_mask.shape}; expected [B={B}, K={cfg.K}] bool")
        n = B * cfg.K
        images, ids = ctx_image.reshape(n, R, R, 3), ctx_ids.reshape(n, -1)
        rows = None
        if capacity is not None and capacity < n:  # the used slots' rows, padded with n (out of range: dropped below)
            rows = jnp.nonzero(ctx_mask.reshape(n), size=capacity, fill_value=n)[0]
            images, ids = images[jnp.minimum(rows, n - 1)], ids[jnp.minimum(rows, n - 1)]
        text = self.text_encoder(ids)                                                  # [n, Lc, D]
        emb = self._embed(jnp.zeros((ids.shape[0],), jnp.float32), text)              # clean: t = 0
        feat, _ = self._encode(images, emb, text, ctx=None)                            # [n, h, w, C]
        if rows is not None:
            feat = jnp.zeros((n,) + feat.shape[1:], feat.dtype).at[rows].set(feat, mode="drop")
        _, h, w, C = feat.shape
        tok = self.ctx_norm(feat) + self.ctx_row[...][:, None, :] + self.ctx_col[...][None, :, :]
        tok = tok.reshape(B, cfg.K, h * w, C) + self.ctx_slot[...][None, :, None, :]
        mask = jnp.broadcast_to(ctx_mask.astype(bool)[:, :, None], (B, cfg.K, h * w))
        return ContextFeatures(tok.reshape(B, cfg.K * h * w, C), mask.reshape(B, cfg.K * h * w))

    # ---- one denoising step ------------------------------------------------------------------------------------
    def denoise(self, x_t, t, text: TextFeatures, ctx: ContextFeatures | None = None, *,
                return_attention: bool = False, probe: dict | None = None):
        """v-prediction for x_t [B, R, R, 3] at times t [B], given encoded text and (optionally) encoded context.

        `return_attention=True` also returns the context cross-attention weights: a dict {block name:
        [B, heads, h*w, K*T]} (jit returns dicts with sorted keys); with cfg.ctx_content_attn the content attention's
        weights come too, as "<block name> content".
        """
        cfg = self.cfg
        self._check_x(x_t)
        if ctx is not None and not cfg.use_context:
            raise ModelInputError("ctx given to a text-to-image model (cfg.use_context=False); pass ctx=None or "
                                  "use attach_context(model, rngs)")
        probe = dict(probe or {})
        if return_attention:
            probe["ctx_attn"] = []
        emb = self._embed(t, text)
        q_pos = self._query_pos(ctx)  # None without context or without cfg.ctx_query_pos
        h, skips = self._encode(x_t, emb, text, ctx, probe, q_pos)
        h = self.middle(h, emb, text, ctx, "middle", probe, q_pos)
        v = self._decode(h, skips, emb, text, ctx, probe, q_pos)
        return (v, dict(probe["ctx_attn"])) if return_attention else v

    def _check_x(self, x_t):
        R = self.cfg.resolution
        if jnp.ndim(x_t) != 4 or jnp.shape(x_t)[1:] != (R, R, 3):
            raise ModelInputError(f"x_t has shape {jnp.shape(x_t)}; expected [B, {R}, {R}, 3] (cfg.resolution={R})")

    def __call__(self, x_t, t, text_ids, ctx_image=None, ctx_ids=None, ctx_mask=None, ctx_capacity=None):
        """Encode text (and context, when given) and denoise: the training forward pass. `ctx_capacity`: see
        `encode_context`."""
        self._check_x(x_t)
        given = [a is not None for a in (ctx_image, ctx_ids, ctx_mask)]
        if any(given) and not all(given):
            raise ModelInputError("give all of ctx_image, ctx_ids, ctx_mask, or none of them")
        ctx = self.encode_context(ctx_image, ctx_ids, ctx_mask, ctx_capacity) if all(given) else None
        return self.denoise(x_t, t, self.encode_text(text_ids), ctx)


# ---- stage 0 -> stage 1 ----------------------------------------------------------------------------------------
def attach_context(model_t2i: InstructImagen, rngs: nnx.Rngs | None = None, **changes) -> InstructImagen:
    """The context model built from a text-to-image model: every shared weight copied, the new context
    cross-attention at identity (zero output projection), so outputs are equal to the last bit.

    `changes` may also switch on the other part that starts at identity, `input_skip=True` (see `grow`)."""
    if model_t2i.cfg.use_context:
        raise ModelInputError("attach_context: the model already has a context branch (cfg.use_context=True)")
    return grow(model_t2i, rngs, use_context=True, **changes)


GROWABLE = ("use_context", "input_skip", "ctx_content_attn")  # switches whose new parts start at identity


def grow(model: InstructImagen, rngs: nnx.Rngs | None = None, **changes) -> InstructImagen:
    """`model` with new parts switched on (`use_context=True`, `input_skip=True`, `ctx_content_attn=True`), each starting at identity (a zero output projection or kernel), every existing weight
    copied: the outputs are bit-equal to the old model's until training moves the new parts."""
    # ctx_query_pos is part of the context branch's layout: it can be chosen only when that branch is attached.
    attaching = changes.get("use_context") is True and not model.cfg.use_context
    bad = sorted(k for k, v in changes.items()
                 if not (k in GROWABLE and v is True or k == "ctx_query_pos" and attaching))
    if bad:
        raise ModelInputError(f"grow: cannot change {bad}; only parts that start at identity can be switched on: "
                              + ", ".join(f"{k}=True" for k in GROWABLE)
                              + " (and ctx_query_pos=True|False together with use_context=True)")
    cfg, rngs = dataclasses.replace(model.cfg, **changes), rngs or nnx.Rngs(0)
    new = nnx.jit(lambda r: InstructImagen(cfg, r))(rngs)  # one compiled init, not one per parameter shape
    nnx.update(new, nnx.state(model))                # a partial state: only the shared paths are replaced
    return new


# ---- sizes and costs -------------------------------------------------------------------------------------------
def _abstract(cfg: ModelConfig):
    return nnx.eval_shape(lambda: InstructImagen(cfg, nnx.Rngs(0)))


def _leaves_with_paths(model):
    state = nnx.state(model, nnx.Param)
    flat = state.flat_state() if hasattr(state, "flat_state") else nnx.to_flat_state(state)
    for path, leaf in flat:
        yield tuple(str(p) for p in path), variable_value(leaf)


def param_count(model_or_cfg) -> int:
    """Number of parameters of a model (or of the model a config builds, computed abstractly)."""
    if isinstance(model_or_cfg, (ModelConfig, str)):
        cfg = get_config(model_or_cfg) if isinstance(model_or_cfg, str) else model_or_cfg
        model_or_cfg = _abstract(cfg)
    return sum(int(jnp.size(v)) for _, v in _leaves_with_paths(model_or_cfg))


def param_table(cfg: ModelConfig) -> dict:
    """Parameters per component: text encoder, encoder (stem, conditioning, DBlocks), middle, decoder, context."""
    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    groups = {"text encoder": 0, "encoder (DBlocks)": 0, "middle": 0, "decoder (UBlocks)": 0,
              "context cross-attention": 0}
    for path, v in _leaves_with_paths(_abstract(cfg)):
        n = int(jnp.size(v))
        if any(p.startswith("ctx_") for p in path):
            g = "context cross-attention"
        elif path[0] == "text_encoder":
            g = "text encoder"
        elif path[0] == "middle":
            g = "middle"
        elif path[0] in ("decoder", "out_norm", "out_conv"):
            g = "decoder (UBlocks)"
        else:
            g = "encoder (DBlocks)"
        groups[g] += n
    groups["total"] = sum(groups.values())
    return groups


def xla_flops(program) -> float:
    """FLOPs from XLA's own cost analysis of a lowered or a compiled computation (a dict, or a list of dicts on older
    jax). The lowered program's count needs no backend compile (an accelerator would autotune every kernel first) and
    is within 0.2 % of the compiled one's (`tiny`'s training forward: 0.5781 against 0.5788 GFLOP)."""
    ca = program.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", float("nan")))


def _abstract_inputs(cfg, B=1):
    S = jax.ShapeDtypeStruct
    R, K = cfg.resolution, cfg.K
    return dict(x=S((B, R, R, 3), jnp.float32), t=S((B,), jnp.float32), ids=S((B, cfg.text_len), jnp.int32),
                ci=S((B, K, R, R, 3), jnp.float32), cid=S((B, K, cfg.ctx_text_len), jnp.int32),
                cm=S((B, K), jnp.bool_))


def flops_breakdown(cfg: ModelConfig) -> dict:
    """Forward FLOPs per image from XLA's cost analysis of the lowered programs (batch 1, nothing is allocated or
    compiled):
    `denoise` (one step with context), `denoise_t2i` (one step without), `encode_context` (K images, once per
    sample), `call` (text + context encoding + denoise: one training forward)."""
    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    cfg = dataclasses.replace(cfg, use_context=True)
    gd, st = nnx.split(_abstract(cfg))
    a = _abstract_inputs(cfg)
    m = lambda s: nnx.merge(gd, s)

    def low(f, *args):
        return xla_flops(jax.jit(f).lower(st, *args))  # counted on the lowered program: nothing is compiled

    ctx_abs = jax.eval_shape(lambda s, ci, cid, cm: m(s).encode_context(ci, cid, cm), st, a["ci"], a["cid"], a["cm"])
    txt_abs = jax.eval_shape(lambda s, ids: m(s).encode_text(ids), st, a["ids"])
    return {
        "denoise": low(lambda s, x, t, tx, c: m(s).denoise(x, t, tx, c), a["x"], a["t"], txt_abs, ctx_abs),
        "denoise_t2i": low(lambda s, x, t, tx: m(s).denoise(x, t, tx, None), a["x"], a["t"], txt_abs),
        "encode_context": low(lambda s, ci, cid, cm: m(s).encode_context(ci, cid, cm), a["ci"], a["cid"], a["cm"]),
        "call": low(lambda s, x, t, ids, ci, cid, cm: m(s)(x, t, ids, ci, cid, cm), a["x"], a["t"], a["ids"],
                    a["ci"], a["cid"], a["cm"]),
    }


def flops_per_image(cfg: ModelConfig, with_context: bool = True, what: str = "call") -> float:
    """Forward FLOPs per image (XLA cost analysis). `what="call"`: one training forward (`__call__`: text, the K
    context images when `with_context`, denoise); `what="denoise"`: one sampling step."""
    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    if what not in ("call", "denoise"):
        raise ValueError(f"flops_per_image(what={what!r}): use 'call' or 'denoise'")
    cfg = dataclasses.replace(cfg, use_context=with_context)
    gd, st = nnx.split(_abstract(cfg))
    a = _abstract_inputs(cfg)
    m = lambda s: nnx.merge(gd, s)
    if what == "call":
        if with_context:
            f, args = (lambda s, x, t, i, ci, cid, cm: m(s)(x, t, i, ci, cid, cm)), (a["x"], a["t"], a["ids"], a["ci"],
                                                                                   a["cid"], a["cm"])
        else:
            f, args = (lambda s, x, t, i: m(s)(x, t, i)), (a["x"], a["t"], a["ids"])
    else:
        txt = jax.eval_shape(lambda s, ids: m(s).encode_text(ids), st, a["ids"])
        if with_context:
            ctx = jax.eval_shape(lambda s, ci, cid, cm: m(s).encode_context(ci, cid, cm), st, a["ci"], a["cid"],
                                 a["cm"])
            f, args = (lambda s, x, t, tx, c: m(s).denoise(x, t, tx, c)), (a["x"], a["t"], txt, ctx)
        else:
            f, args = (lambda s, x, t, tx: m(s).denoise(x, t, tx)), (a["x"], a["t"], txt)
    return xla_flops(jax.jit(f).lower(st, *args))  # the lowered program's count: instant, even for `base`


def trace_shapes(model: InstructImagen, batch: dict, t=None) -> list:
    """[(name, output shape)] for the text and context features and every Block of one forward pass, in call order.

    Runs abstractly (`jax.eval_shape`): nothing is computed, so it is instant even for `base`."""
    gd, st = nnx.split(model)
    cfg = model.cfg
    B = int(jnp.shape(batch["text_ids"])[0])
    x = batch.get("image", jax.ShapeDtypeStruct((B, cfg.resolution, cfg.resolution, 3), jnp.float32))
    t = jax.ShapeDtypeStruct((B,), jnp.float32) if t is None else t
    rows, probe = [], {"shapes": []}

    def f(s, x, t, batch):
        m = nnx.merge(gd, s)
        text = m.encode_text(batch["text_ids"])
        rows.append(("text tokens", tuple(text.tokens.shape)))
        ctx = None
        if cfg.use_context and "ctx_image" in batch:
            ctx = m.encode_context(batch["ctx_image"], batch["ctx_ids"], batch["ctx_mask"])
            rows.append(("context tokens", tuple(ctx.tokens.shape)))
        v = m.denoise(x, t, text, ctx, probe=probe)
        rows.extend(probe["shapes"] + [("output v", tuple(v.shape))])
        return v

    keys = ("text_ids", "ctx_image", "ctx_ids", "ctx_mask")
    jax.eval_shape(f, st, x, t, {k: batch[k] for k in keys if k in batch})
    return rows


def context_attention(model: InstructImagen, x_t, t, text: TextFeatures, ctx: ContextFeatures) -> dict:
    """The context cross-attention weights of one denoise call: {block name: [B, heads, h*w, K*T]} (jit-friendly)."""
    return model.denoise(x_t, t, text, ctx, return_attention=True)[1]
