"""Building blocks of the Imagen-style UNet (paper §3.1, App. A.2.1), in Flax NNX.

Precision rule everywhere: parameters are float32; matmuls and convs run in the compute `dtype` (float32 or
bfloat16); normalisation statistics and the attention softmax run in float32.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def variable_value(v):
    """The array inside an nnx Variable (flax 0.11: `.value`; newer: `get_value()`, `.value` deprecated)."""
    if hasattr(v, "get_value"):
        return v.get_value()
    return v.value if hasattr(v, "value") else v


def module_list(modules):
    """A list of submodules that flax 0.11 (plain list) and flax >= 0.12 (`nnx.List`) both track as children."""
    return nnx.List(modules) if hasattr(nnx, "List") else list(modules)


def sinusoidal_embedding(t, dim: int, scale: float = 1000.0):
    """Transformer-style sinusoidal features of a continuous time `t` in [0, 1] (we embed `scale * t`): [B] -> [B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (scale * t.astype(jnp.float32))[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def attend(q, k, v, mask=None, return_weights: bool = False):
    """Multi-head scaled dot-product attention, batched over heads: q [B, Q, H, D], k/v [B, S, H, D], mask [B, S].

    Softmax in float32. A query whose keys are *all* masked gets an output of exactly zero, so a dropped condition
    (an all-pad text, a row of empty context slots) adds nothing to the residual stream.
    """
    if not return_weights:  # the fused path (XLA, or cuDNN where jax picks it); softmax in float32 inside
        m = None if mask is None else mask[:, None, None, :]
        out = jax.nn.dot_product_attention(q, k, v, mask=m)
        return out if mask is None else out * jnp.any(mask, axis=-1)[:, None, None, None].astype(out.dtype)
    # The same computation written out, returning the attention weights [B, H, Q, S] (for figures).
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bqhd,bshd->bhqs", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        weights = weights * mask[:, None, None, :]          # all-masked rows: uniform -> exactly 0
    out = jnp.einsum("bhqs,bshd->bqhd", weights.astype(v.dtype), v)
    return (out, weights) if return_weights else out


class Attention(nnx.Module):
    """Pre-norm multi-head attention with a residual: `x + W_o attend(W_q norm(x), W_k c, W_v c)`.

    Self-attention when `kv_dim is None` (keys from x itself), otherwise cross-attention over condition tokens
    `c` [B, S, kv_dim] with a mask [B, S]. The output projection has no bias (a fully masked query adds exactly 0);
    `zero_init=True` starts it at zero, so the layer is the identity at birth (used for the new context layers).
    Works on [B, N, C] tokens; a UNet block flattens its feature map into N = h*w tokens.
    """

    def __init__(self, dim, heads, *, kv_dim=None, norm_groups=None, zero_init=False, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.heads, self.self_attn = heads, kv_dim is None
        self.norm = (nnx.GroupNorm(dim, num_groups=norm_groups, dtype=jnp.float32, rngs=rngs) if norm_groups
                     else nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs))
        lin = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        if self.self_attn:
            self.qkv = nnx.Linear(dim, 3 * dim, use_bias=False, **lin)
        else:
            self.q = nnx.Linear(dim, dim, use_bias=False, **lin)
            self.kv = nnx.Linear(kv_dim, 2 * dim, use_bias=False, **lin)
        init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.lecun_normal()
        self.out = nnx.Linear(dim, dim, use_bias=False, kernel_init=init, **lin)
        self.dtype = dtype

    def __call__(self, x, cond=None, mask=None, return_weights=False, q_pos=None):
        """`q_pos` [N, C] (cross-attention only): a position code added to the normalised queries, not the values."""
        B, N, C = x.shape
        h = self.norm(x).astype(self.dtype)
        split = lambda a: a.reshape(a.shape[0], a.shape[1], self.heads, -1)
        if self.self_attn:
            q, k, v = jnp.split(self.qkv(h), 3, axis=-1)
        else:
            q = self.q(h if q_pos is None else h + q_pos.astype(self.dtype))
            k, v = jnp.split(self.kv(cond.astype(self.dtype)), 2, axis=-1)
        o = attend(split(q), split(k), split(v), mask, return_weights)
        o, w = o if return_weights else (o, None)
        y = x + self.out(o.reshape(B, N, C)).astype(x.dtype)
        return (y, w) if return_weights else y


class ResBlock(nnx.Module):
    """Imagen's ResNet block: GroupNorm -> swish -> conv3x3, then FiLM from the conditioning embedding
    (time + pooled text: `h * (1 + scale) + shift`), GroupNorm -> swish -> dropout -> conv3x3, plus a 1x1 skip."""

    def __init__(self, cin, cout, emb_dim, *, groups, dropout=0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        conv = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.norm1 = nnx.GroupNorm(cin, num_groups=groups, dtype=jnp.float32, rngs=rngs)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), **conv)
        self.film = nnx.Linear(emb_dim, 2 * cout, **conv)
        self.norm2 = nnx.GroupNorm(cout, num_groups=groups, dtype=jnp.float32, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.conv2 = nnx.Conv(cout, cout, (3, 3), **conv)
        self.skip = nnx.Conv(cin, cout, (1, 1), **conv) if cin != cout else None
        self.dtype = dtype

    def __call__(self, x, emb):
        h = self.conv1(nnx.swish(self.norm1(x)).astype(self.dtype))
        scale, shift = jnp.split(self.film(nnx.swish(emb).astype(self.dtype)), 2, axis=-1)
        h = self.norm2(h) * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
        h = nnx.swish(h).astype(self.dtype)
        if self.dropout is not None:
            h = self.dropout(h)
        h = self.conv2(h)
        skip = self.skip(x.astype(self.dtype)) if self.skip is not None else x
        return (skip + h).astype(self.dtype)


class Downsample(nnx.Module):
    """Stride-2 3x3 conv: the first layer of every DBlock level (Efficient UNet: down-sample before the blocks)."""

    def __init__(self, cin, cout, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), strides=(2, 2), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Nearest-neighbour x2 then a 3x3 conv: the last layer of every UBlock level."""

    def __init__(self, cin, cout, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x):
        B, H, W, C = x.shape
        x = jnp.broadcast_to(x[:, :, None, :, None, :], (B, H, 2, W, 2, C)).reshape(B, 2 * H, 2 * W, C)
        return self.conv(x)
