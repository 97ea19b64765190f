"""The text encoder: a small pre-LN transformer trained jointly with the UNet.

The paper uses a frozen T5-XXL (§3.1); the kit's world has a small vocabulary, so a few layers trained from scratch
do the job (design.md). One encoder serves both the payload instruction (`text_len` tokens) and every context's
`[ref#k] + text` (`ctx_text_len` tokens), so the reference markers mean the same thing in both (paper App. A.3.2).
Pad id is 0; an all-pad text is a valid "dropped" condition: its mask is all False and its pooled vector is zero.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import Attention, module_list


class TextFeatures(NamedTuple):
    """Encoded text: `tokens` [B, L, D] (float32), `mask` [B, L] (bool, ids != 0), `pooled` [B, D] (masked mean)."""

    tokens: jax.Array
    mask: jax.Array
    pooled: jax.Array


class TransformerLayer(nnx.Module):
    """Pre-LN transformer layer: x + SelfAttn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim, heads, *, dtype, rngs: nnx.Rngs):
        self.attn = Attention(dim, heads, dtype=dtype, rngs=rngs)       # LayerNorm inside (pre-LN)
        self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, rngs=rngs)
        self.fc1 = nnx.Linear(dim, 4 * dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.fc2 = nnx.Linear(4 * dim, dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.dtype = dtype

    def __call__(self, x, mask):
        x = self.attn(x, mask=mask)
        return x + self.fc2(nnx.gelu(self.fc1(self.norm(x).astype(self.dtype)))).astype(x.dtype)


class TextEncoder(nnx.Module):
    """Token + learned position embeddings, `layers` pre-LN transformer layers, a final LayerNorm."""

    def __init__(self, vocab_size, width, layers, max_len, head_dim, *, dtype, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, width, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_len, width), jnp.float32))
        self.layers = module_list([TransformerLayer(width, width // head_dim, dtype=dtype, rngs=rngs)
                                   for _ in range(layers)])
        self.norm = nnx.LayerNorm(width, dtype=jnp.float32, rngs=rngs)
        self.vocab_size, self.max_len = vocab_size, max_len

    def __call__(self, ids) -> TextFeatures:
        L = ids.shape[-1]
        if L > self.max_len:
            raise ValueError(f"text ids have {L} tokens; this model's text encoder takes at most {self.max_len} "
                             f"(ModelConfig.text_len / ctx_text_len): truncate when tokenizing")
        mask = ids != 0
        x = self.embed(ids) + self.pos[...][:L]
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x) * mask[..., None]                                # pads carry exactly 0
        n = jnp.maximum(mask.sum(-1, keepdims=True), 1).astype(jnp.float32)
        return TextFeatures(x, mask, x.sum(1) / n)
