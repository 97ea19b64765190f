"""One model with both readers: a mixture model's aligned (place-to-place) context attention, which reads control
maps, and a subject specialist's context attention as the second, position-free one (`ctx_content_attn`).

    python scripts/two_readers.py MIXTURE_CKPT SPECIALIST_CKPT OUT_DIR

The new model is MIXTURE_CKPT (every weight, the context tokens' norm, slot and position codes included) with
`ctx_content_attn` grown, and each block's content attention set to SPECIALIST_CKPT's context attention of the same
block (its q, kv, out projections and norm). The specialist gave up the place codes (its attention on the query's own
place is even), so dropping the query position it was trained with changes little; its tokens now come from the
mixture model's encoder, which both models inherited from the same stage 1. OUT_DIR is an exported checkpoint:
`iimagen train --stage 2 --init OUT_DIR ...` trains on from it, `iimagen eval --checkpoint OUT_DIR` scores it.
(README, "One model for subjects and control maps".)
"""
from __future__ import annotations

import sys

from flax import nnx

from iimagen.checkpoint import save_model
from iimagen.model.unet import grow
from iimagen.train import load_any


def two_readers(mix, spec):
    """The mixture model `mix` with `ctx_content_attn` grown and each block's content attention set to the context
    attention of the same block of `spec` (both InstructImagen models of one layout, with context branches)."""
    if mix.cfg.ctx_content_attn or not (mix.cfg.use_context and spec.cfg.use_context):
        raise ValueError("two_readers: both models need a context branch, and the mixture model no content attention")
    model = grow(mix, ctx_content_attn=True)
    copied = 0
    for path, block in nnx.iter_graph(model):
        if getattr(block, "ctx_content", None) is None:
            continue
        src = spec
        for k in path:
            src = src[k] if isinstance(k, int) else getattr(src, k)
        nnx.update(block.ctx_content, nnx.state(src.ctx_attn))
        copied += 1
    if not copied:
        raise ValueError("two_readers: no context cross-attention block found")
    return model


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    mix, tok, meta = load_any(sys.argv[1])
    model = two_readers(mix, load_any(sys.argv[2])[0])
    meta = {**meta, "init": f"{sys.argv[1]} + content attention from {sys.argv[2]} (scripts/two_readers.py)"}
    save_model(sys.argv[3], model, meta, tokenizer=tok, dtype="float32")
    print(f"{sys.argv[3]}: {sys.argv[1]} with {sys.argv[2]}'s context attention as its content attention")
