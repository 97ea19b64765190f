"""The Instruct-Imagen model (paper §3.1, App. A.2.1): a pixel UNet in Flax NNX whose lowest-resolution blocks
cross-attend to multi-modal context encoded by the UNet's own down-sampling encoder.

    model = InstructImagen(get_config("tiny"), rngs=nnx.Rngs(0))
    text = model.encode_text(text_ids)                              # once per sample
    ctx = model.encode_context(ctx_image, ctx_ids, ctx_mask)         # once per sample
    v = model.denoise(x_t, t, text, ctx)                             # every step
"""
from .layers import attend
from .text import TextEncoder, TextFeatures
from .unet import (GROWABLE, ContextFeatures, InstructImagen, ModelInputError, attach_context, context_attention, grow,
                   flops_breakdown, flops_per_image, param_count, param_table, trace_shapes)

__all__ = ["GROWABLE", "InstructImagen", "TextFeatures", "ContextFeatures", "ModelInputError", "attach_context", "grow", "attend",
           "param_count", "param_table", "flops_per_image", "flops_breakdown", "trace_shapes",
           "context_attention", "TextEncoder"]
