"""One model with both readers: an aligned (place-to-place) context attention, which reads control maps, and a
subject specialist's context attention as the second, position-free one (`ctx_content_attn`). Two ways to build it:

    python experiments/two_readers.py MIXTURE_CKPT SPECIALIST_CKPT OUT_DIR
    python experiments/two_readers.py --new-aligned [--aligned-from STAGE1_CKPT] SPECIALIST_CKPT OUT_DIR

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
almost even (own place 0.021 against even attention's 0.016; rescaled 0.074-0.097). `--aligned-from STAGE1_CKPT`
takes a trained aligned reader instead, stage 1's, with the position code it was trained with (own place
0.14-0.49): stage 1 taught it to copy a neighbour place to place, which a fresh reader must still learn.

OUT_DIR is an exported checkpoint: `iimagen train --stage 2 --init OUT_DIR ...` trains on from it, `iimagen eval
--checkpoint OUT_DIR` scores it. (docs/experiments/2026-12-02-one-model-both-readings.md and
2026-12-06-two-readers.md.)
"""
from __future__ import annotations

import argparse

import jax.numpy as jnp
from flax import nnx

from iimagen.checkpoint import save_model
from iimagen.model.unet import POS_RMS, grow
from iimagen.train import create_model, load_any


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


def two_readers(mix, spec):
    """The mixture model `mix` with `ctx_content_attn` grown and each block's content attention set to the context
    attention of the same block of `spec` (both InstructImagen models of one layout, with context branches)."""
    if mix.cfg.ctx_content_attn or not (mix.cfg.use_context and spec.cfg.use_context):
        raise ValueError("two_readers: both models need a context branch, and the first no content attention")
    model = grow(mix, ctx_content_attn=True)
    for block, src in _content_blocks(model, spec):
        nnx.update(block.ctx_content, nnx.state(src.ctx_attn))
    return model


def new_aligned(spec, seed: int = 0, aligned_from=None):
    """The specialist `spec` with its context attention as the position-free content attention of each block, and
    a new aligned context attention in its place: a trained one, `aligned_from`'s (a model of the same layout,
    e.g. stage 1's), with the context's 2-D position code it was trained with; or, without `aligned_from`, one as a
    freshly built model has it (aligned at birth, zero output), with the specialist's position code scaled back to
    its rms at birth (`POS_RMS` per axis), which the new reader's alignment needs. The content reader keeps the
    specialist's encoder, so it reads on (docs/experiments/2026-12-06-two-readers.md: subject gain +5.5 / +4.0 %
    with stage 1's reader, +7.8 / +4.5 % with a fresh one, against the specialist's +10.2 / +5.6 %)."""
    if not spec.cfg.ctx_query_pos:
        raise ValueError("two_readers --new-aligned: the specialist has no aligned context attention "
                         "(ctx_query_pos=False), so there is no place reader to renew")
    model = two_readers(spec, spec)
    if aligned_from is None:
        aligned_from = create_model(model.cfg, seed)
        for code in (model.ctx_row, model.ctx_col):
            code[...] = code[...] * (POS_RMS / jnp.sqrt(jnp.mean(jnp.square(code[...]))))
    else:
        model.ctx_row[...], model.ctx_col[...] = aligned_from.ctx_row[...], aligned_from.ctx_col[...]
    for block, src in _content_blocks(model, aligned_from):
        nnx.update(block.ctx_attn, nnx.state(src.ctx_attn))
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], usage=__doc__.split("\n\n")[1])
    ap.add_argument("--new-aligned", action="store_true", help="the specialist with a new aligned reader")
    ap.add_argument("--aligned-from", metavar="CKPT", help="with --new-aligned: take that model's aligned reader")
    ap.add_argument("checkpoints", nargs="+", metavar="CKPT")
    a = ap.parse_args(argv)
    *ins, out = a.checkpoints
    if len(ins) != (1 if a.new_aligned else 2) or (a.aligned_from and not a.new_aligned):
        ap.error("give MIXTURE_CKPT SPECIALIST_CKPT OUT_DIR, or --new-aligned [--aligned-from CKPT] "
                 "SPECIALIST_CKPT OUT_DIR")
    first, tok, meta = load_any(ins[0])
    if a.new_aligned:
        src = load_any(a.aligned_from)[0] if a.aligned_from else None
        model = new_aligned(first, aligned_from=src)
        reader = f"{a.aligned_from}'s aligned reader" if a.aligned_from else "a new aligned reader"
        init = f"{ins[0]} with {reader} (experiments/two_readers.py --new-aligned)"
        said = f"{ins[0]}'s context attention as its content attention, and {reader}"
    else:
        model = two_readers(first, load_any(ins[1])[0])
        init = f"{ins[0]} + content attention from {ins[1]} (experiments/two_readers.py)"
        said = f"{ins[0]} with {ins[1]}'s context attention as its content attention"
    save_model(out, model, {**meta, "init": init}, tokenizer=tok, dtype="float32")
    print(f"{out}: {said}")


if __name__ == "__main__":
    main()
