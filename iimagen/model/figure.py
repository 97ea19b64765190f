"""A box drawing of the Instruct-Imagen UNet for a config (paper Fig. 3, Table 5), with matplotlib."""
from __future__ import annotations

from iimagen.configs import ModelConfig, get_config


def draw_architecture(cfg: ModelConfig | str = "tiny", ax=None):
    """Draw DBlocks, middle and UBlocks of `cfg`, where text and context attention sit, and the context encoder
    (the same DBlocks, shared weights) that turns each context image into tokens. Returns the matplotlib axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    L, R = cfg.levels, cfg.resolution
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 2.2 + 1.1 * L))
    ax.set_axis_off()
    W, H = 2.3, 0.7

    def box(x, y, text, color, w=W, h=H):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc=color, ec="black"))
        ax.text(x, y, text, ha="center", va="center", fontsize=8)

    def arrow(p, q, style="-|>", color="black", ls="-"):
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle=style, mutation_scale=10, color=color, ls=ls, lw=1))

    def attn_label(l):
        if l not in cfg.attn_levels:
            return ""
        return "\n+ self, text" + (" + CONTEXT attn" if cfg.use_context else " attn")

    # Denoiser: DBlocks going down on the left, UBlocks coming up on the right.
    xd, xu, top = 4.0, 9.0, L + 1.0
    box(xd, top, f"x_t {R}x{R}x3\nconv_in -> {cfg.channels} ch", "#eeeeee")
    box(xu, top, f"conv_out -> v {R}x{R}x3", "#eeeeee")
    prev_d, prev_u = (xd, top), (xu, top)
    for l in range(L):
        y = top - 1 - l
        r, c = R // 2 ** (l + 1), cfg.level_channels[l]
        col = "#ffd8a8" if l in cfg.attn_levels and cfg.use_context else (
            "#cfe8ff" if l in cfg.attn_levels else "#e6f4d7")
        box(xd, y, f"DBlock-{l + 1}: down -> {r}x{r}x{c}\n{cfg.blocks_per_level} x ResBlock{attn_label(l)}", col)
        box(xu, y, f"UBlock-{l + 1}: {cfg.blocks_per_level} x ResBlock{attn_label(l)}\nup -> {2 * r}x{2 * r}", col)
        arrow((prev_d[0], prev_d[1] - H / 2), (xd, y + H / 2))
        arrow((xu, y + H / 2), (prev_u[0], prev_u[1] - H / 2))
        arrow((xd + W / 2, y), (xu - W / 2, y), style="-|>", color="gray", ls="--")   # skips
        prev_d, prev_u = (xd, y), (xu, y)
    ym = top - 1 - L
    rb = cfg.bottleneck_resolution
    box((xd + xu) / 2, ym, f"middle {rb}x{rb}x{cfg.level_channels[-1]}\nResBlock{attn_label(L - 1)}",
        "#ffd8a8" if cfg.use_context else "#cfe8ff", w=3.2)
    arrow((xd, ym + 1 - H / 2), ((xd + xu) / 2 - 1.6, ym))
    arrow(((xd + xu) / 2 + 1.6, ym), (xu, ym + 1 - H / 2))
    # Conditioning: text encoder (shared) and the time embedding.
    box(0.6, top, f"text encoder\n{cfg.text_layers} layers x {cfg.text_width}", "#f3d9fa", w=2.0)
    box(0.6, top - 1, "t -> sin(1000 t)\n+ pooled text -> FiLM", "#f3d9fa", w=2.0)
    ax.text(0.6, top - 1.75, "text tokens -> text cross-attn\n(every attention block)", ha="center", fontsize=7)
    # Context encoder: the same DBlocks (shared weights), clean (t = 0), on each of the K context images.
    if cfg.use_context:
        xc = 13.2
        box(xc, top, f"K={cfg.K} context images\n+ '[ref#k] + text' each", "#fff3bf", w=2.6)
        box(xc, top - 1.2, "the SAME conv_in + DBlocks\n(shared weights, t = 0,\nno context attn)", "#ffd8a8",
            w=2.6, h=1.0)
        T = rb * rb
        box(xc, top - 2.6, f"{rb}x{rb} map -> {T} tokens/image\n+ slot emb k + 2-D pos\n-> [B, K*{T}, "
                           f"{cfg.level_channels[-1]}]", "#fff3bf", w=2.6, h=1.0)
        arrow((xc, top - H / 2), (xc, top - 0.7))
        arrow((xc, top - 1.7), (xc, top - 2.1))
        arrow((xc - 1.3, top - 2.6), (xu + W / 2, top - 1 - (L - 1)), color="#d9480f")
        arrow((xc - 1.3, top - 2.6), ((xd + xu) / 2 + 1.6, ym + 0.2), color="#d9480f")
        ax.text(xc, top - 3.45, "keys/values of the context\ncross-attention (zero-init output)",
                ha="center", fontsize=7, color="#d9480f")
    ax.set_xlim(-0.6, 14.8 if cfg.use_context else 10.6)
    ax.set_ylim(ym - 0.8, top + 0.7)
    ax.set_title(f"Instruct-Imagen UNet, config {cfg.name!r} (orange: blocks with context cross-attention)",
                 fontsize=10)
    return ax
