"""One model with both readers: an aligned (place-to-place) context attention, which reads control maps, and a
subject specialist's context attention as the second, position-free one (`ctx_content_attn`). Two ways to build it:

    python scripts/two_readers.py MIXTURE_CKPT SPECIALIST_CKPT OUT_DIR
    python scripts/two_readers.py --new-aligned SPECIALIST_CKPT OUT_DIR

The first takes MIXTURE_CKPT (every weight, the context tokens' norm, slot and position codes included) with
`ctx_content_attn` grown, and sets each block's content attention to SPECIALIST_CKPT's context attention of the same
block (its q, kv, out projections and norm). The specialist gave up the place codes (its attention on the query's own
place is even), so dropping the query position it was trained with changes little; but its tokens now come from the
mixture model's encoder, not the one it learnt to read.

`--new-aligned` keeps the reader with the encoder it learnt to read: SPECIALIST_CKPT (every weight) with its context
attention moved to the position-free slot, and a new aligned context attention in its place, as at birth (key
projection equal to the query projection, zero output; `Block`), so the model starts as the specialist and the
mixture can grow a place reader for the control maps beside the subject reader. The specialist shrank the context
tokens' 2-D position code (rms 0.7 at birth, 0.28-0.32 after it), and the new reader's alignment is that code seen
through its projections: it is scaled back to the rms a new branch has (`POS_RMS`), or the new reader starts
almost even (own place 0.021 against even attention's 0.016; rescaled 0.074-0.097) and the mixture finds no control.

OUT_DIR is an exported checkpoint: `iimagen train --stage 2 --init OUT_DIR ...` trains on from it, `iimagen eval
--checkpoint OUT_DIR` scores it. (README, "One model for subjects and control maps".)
"""
from __future__ import annotations

import sys

import jax.numpy as jnp
from flax import nnx

from iimagen.checkpoint import save_model
from iimagen.model.unet import POS_RMS, InstructImagen, grow
from iimagen.train import load_any


def _content_blocks(model, other):
    """(block, the same block of `other`) for each block of `model` that has a content attention."""
    pairs = []
    for path, block in nnx.iter_graph(model):
        if getattr(block, "ctx_content", None) is None:
            continue
        src = other
        for k in path:
            src = src[k] if isinstance(k, int) else getattr(src, k)
        pairs.append((block, src))
    if not pairs:
        raise ValueError("two_readers: no context cross-attention block found")
    return pairs


def _grown(model, spec):
    if model.cfg.ctx_content_attn or not (model.cfg.use_context and spec.cfg.use_context):
        raise ValueError("two_readers: both models need a context branch, and the first no content attention")
    return grow(model, ctx_content_attn=True)


def two_readers(mix, spec):
    """The mixture model `mix` with `ctx_content_attn` grown and each block's content attention set to the context
    attention of the same block of `spec` (both InstructImagen models of one layout, with context branches)."""
    model = _grown(mix, spec)
    for block, src in _content_blocks(model, spec):
        nnx.update(block.ctx_content, nnx.state(src.ctx_attn))
    return model


def new_aligned(spec, seed: int = 0):
    """The specialist `spec` with its context attention as the position-free content attention of each block, and
    a new aligned context attention (as a freshly built model has it: aligned at birth, zero output) in its place,
    and the context's 2-D position code scaled back to its rms at birth (`POS_RMS` per axis), which the new reader's
    alignment needs. Its outputs are the specialist's less the query position code its reader was trained with and
    with that code rescaled in the tokens it reads (subject gain +7.8 / +4.5 % against the specialist's +10.2 /
    +5.6 %, README)."""
    if not spec.cfg.ctx_query_pos:
        raise ValueError("two_readers --new-aligned: the specialist has no aligned context attention "
                         "(ctx_query_pos=False), so there is no place reader to renew")
    model = two_readers(spec, spec)
    fresh = nnx.jit(lambda r: InstructImagen(model.cfg, r))(nnx.Rngs(seed))
    for block, born in _content_blocks(model, fresh):
        nnx.update(block.ctx_attn, nnx.state(born.ctx_attn))
    for code in (model.ctx_row, model.ctx_col):
        code.value = code.value * (POS_RMS / jnp.sqrt(jnp.mean(jnp.square(code.value))))
    return model


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "--new-aligned":
        spec, tok, meta = load_any(args[1])
        model, init = new_aligned(spec), f"{args[1]} with a new aligned reader (scripts/two_readers.py --new-aligned)"
        said = f"{args[1]}'s context attention as its content attention, and a new aligned one"
    elif len(args) == 3 and not args[0].startswith("-"):
        mix, tok, meta = load_any(args[0])
        model = two_readers(mix, load_any(args[1])[0])
        init = f"{args[0]} + content attention from {args[1]} (scripts/two_readers.py)"
        said = f"{args[0]} with {args[1]}'s context attention as its content attention"
    else:
        raise SystemExit(__doc__)
    save_model(args[2], model, {**meta, "init": init}, tokenizer=tok, dtype="float32")
    print(f"{args[2]}: {said}")
