"""Named model configs: `tiny` (32 px, CPU), `small` (64 px, one Colab v5e-1 chip), `base` (128 px, paper Table 5).

A `ModelConfig` is a frozen dataclass that round-trips through `dataclasses.asdict` and JSON (checkpoints store it as
`config.json`). `get_config(name, **overrides)` returns one of the named configs, optionally changed.

The UNet layout follows Imagen's Efficient UNet as changed by Instruct-Imagen (paper §3.1, App. A.2.1, Table 5):
every level starts with a stride-2 down-sampling, then holds `blocks_per_level` blocks of **one** ResNet block each
(the paper's `numResNetBlocksPerBlock=1`); attention (self, text cross-attention and the new context cross-attention)
sits only at the levels named in `attn_levels` (the lowest one, as in Table 5). See `iimagen/model/unet.py`.

The figures in each docstring come from `print_param_table(get_config(name))` (parameters: exact; FLOPs: XLA's
cost analysis of the lowered program of one forward pass per image, jax 0.10.2).
"""
from __future__ import annotations

import dataclasses
import json

DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A ModelConfig field has a value the model cannot be built with; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an `InstructImagen` (see `iimagen.model`).

    Layout: images of `resolution` px go through a 3x3 input conv (`channels`), then one level per entry of
    `channel_mult`; level l halves the resolution on entry and works at `channels * channel_mult[l]` channels with
    `blocks_per_level` blocks. The decoder mirrors it. `attn_levels` lists the levels (0-based) whose blocks carry
    self-attention, text cross-attention and (when `use_context`) context cross-attention.
    """

    name: str = "custom"
    resolution: int = 32
    channels: int = 64
    channel_mult: tuple = (1, 2)
    blocks_per_level: int = 2
    attn_levels: tuple = (1,)
    head_dim: int = 32             # attention heads = width // head_dim (the UNet's and the text encoder's)
    norm_groups: int = 16          # GroupNorm groups in the UNet
    text_width: int = 128
    text_layers: int = 2
    text_len: int = 64             # instruction tokens
    ctx_text_len: int = 32         # tokens of each context's `[ref#k] + text`
    K: int = 3                     # context slots
    vocab_size: int = 2048
    use_context: bool = True       # False: the stage-0 text-to-image model (no context branch)
    dtype: str = "float32"         # compute dtype; parameters, norms and softmax stay float32
    dropout: float = 0.0
    input_skip: bool = False       # full-resolution skip: input conv -> output head (zero-initialised, see unet.py)
    ctx_query_pos: bool = False    # queries of the context cross-attention get the context's 2-D position (unet.py)
    ctx_content_attn: bool = False  # a second context cross-attention without position codes (on in the named configs)

    def __post_init__(self):
        # JSON turns tuples into lists: accept both, store tuples so the config stays hashable.
        for f in ("channel_mult", "attn_levels"):
            v = getattr(self, f)
            if isinstance(v, int) and not isinstance(v, bool):
                v = (v,)
            if not isinstance(v, (tuple, list)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise ConfigError(f"ModelConfig.{f}={v!r}: give integers, e.g. (1, 2) (on the command line 1:2)")
            object.__setattr__(self, f, tuple(v))
        self.validate()

    # -- derived sizes --------------------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def level_channels(self) -> tuple:
        return tuple(self.channels * m for m in self.channel_mult)

    @property
    def bottleneck_resolution(self) -> int:
        return self.resolution // 2 ** self.levels

    @property
    def ctx_tokens_per_image(self) -> int:
        """T: tokens per context image (the flattened lowest-resolution feature map)."""
        return self.bottleneck_resolution ** 2

    def validate(self):
        def bad(field, msg):
            raise ConfigError(f"ModelConfig.{field}={getattr(self, field)!r}: {msg}")

        kinds = {"int": ((int,), "an integer"), "bool": ((bool,), "true or false"), "str": ((str,), "a string"),
                 "float": ((int, float), "a number"), "tuple": ((tuple,), "a tuple")}
        for f in dataclasses.fields(self):  # types first: a string where a number belongs is named, not a TypeError
            v, (want, words) = getattr(self, f.name), kinds[str(f.type)]
            if not isinstance(v, want) or (isinstance(v, bool) and bool not in want):
                bad(f.name, f"must be {words}, like the default {f.default!r}")
        if self.dtype not in DTYPES:
            bad("dtype", f"use one of {DTYPES}")
        if not self.channel_mult:
            bad("channel_mult", "give at least one level, e.g. (1, 2)")
        if self.resolution % 2 ** self.levels or self.resolution < 2 ** self.levels:
            bad("resolution", f"must be divisible by 2**levels = {2 ** self.levels} (levels = len(channel_mult))")
        if not self.attn_levels or any(not 0 <= a < self.levels for a in self.attn_levels):
            bad("attn_levels", f"give level indices in [0, {self.levels - 1}]; the paper uses the lowest one only")
        if self.levels - 1 not in self.attn_levels:
            bad("attn_levels", f"must include the lowest level {self.levels - 1}: context tokens come from there")
        for c in self.level_channels + (self.channels,):
            if c % self.norm_groups:
                bad("norm_groups", f"must divide every level's width {self.level_channels}")
            if c % self.head_dim and c in [self.level_channels[a] for a in self.attn_levels]:
                bad("head_dim", f"must divide the width of attention levels {self.level_channels}")
        if self.text_width % self.head_dim:
            bad("head_dim", f"must divide text_width={self.text_width}")
        for f in ("blocks_per_level", "text_layers", "text_len", "ctx_text_len", "K", "vocab_size", "channels"):
            if getattr(self, f) < 1:
                bad(f, "must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")

    # -- JSON (checkpoints) -------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for k, off in RETIRED.items():  # a retired switch, stored off by older checkpoints, means nothing now
            if k in d and d[k] == off:
                d = {x: v for x, v in d.items() if x != k}
            elif k in d:
                raise ConfigError(f"ModelConfig.{k}={d[k]!r}: this switch was retired (experiments/, git history "
                                  f"before 2026-12-08); load the checkpoint with an older kit or retrain it")
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"ModelConfig has no field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))


# Switches of earlier experiments, removed from the model: a checkpoint that stored them off still loads.
RETIRED = {"ctx_patch": False}


def tiny() -> ModelConfig:
    """32 px, trains on a laptop CPU and in CI.

    Layout: 32 -> 16 (32 ch) -> 8 (64 ch), 2 blocks per level, attention at 8x8 (64 tokens per context image);
    text encoder 128 wide, 3 layers.
    Full-resolution input skip on (`input_skip`: the kit's fix for the per-pixel noise the paper's layout cannot see
    at 32 px; on the same stage-1 batches it brought the loss from 0.154 to 0.129 by step 200).
    Both context readers (`ctx_query_pos` aligned, `ctx_content_attn` by content; see unet.py), each zero at birth.
    Parameters: 2.01 M (text encoder 0.86 M, context branch 0.17 M = 8.3 %, input skip 1 k).
    FLOPs per image (forward, XLA's count of the lowered program): 0.249 GFLOP per denoise step with context, 0.174
    without; 0.616 GFLOP per training forward (text + 3 context images + denoise).
    Memory: ~31 MB for parameters + Adam + EMA (fp32).
    Forward+backward at batch 8 with 3 contexts: ~0.5 s on the 2-core CPU after compile (measured under load).
    """
    return ModelConfig(name="tiny", resolution=32, channels=32, channel_mult=(1, 2), blocks_per_level=2,
                       attn_levels=(1,), head_dim=32, norm_groups=8, text_width=128, text_layers=3,
                       input_skip=True, ctx_query_pos=True, ctx_content_attn=True)


def small() -> ModelConfig:
    """64 px, meant for one Colab TPU v5e-1 chip (16 GB) at batch >= 64 in bfloat16 (not yet measured on a TPU).

    Layout: 64 -> 32 (128 ch) -> 16 (256 ch) -> 8 (384 ch), 3 blocks per level, attention at 16x16 and 8x8
    (context tokens: 8x8 = 64 per image); text encoder 256 wide, 4 layers.
    Parameters: 69.9 M (context branch, both readers, 12.2 M = 17.5 %). FLOPs per image (forward, XLA's count of the
    lowered program): 22.1 GFLOP per denoise step with context, 41.6 GFLOP per training forward (text + 3 context
    images + denoise).
    Memory: ~1.0 GB for parameters + Adam + EMA (fp32), plus activations.
    Full-resolution input skip on, as in `tiny` (16.5 k parameters, 0.13 GFLOP): its first level down-samples too.
    """
    return ModelConfig(name="small", resolution=64, channels=128, channel_mult=(1, 2, 3), blocks_per_level=3,
                       attn_levels=(1, 2), head_dim=64, norm_groups=32, text_width=256, text_layers=4,
                       dtype="bfloat16", input_skip=True, ctx_query_pos=True, ctx_content_attn=True)


def base() -> ModelConfig:
    """128 px, the paper's Table 5 layout at reduced width (paper: 512/1024/2048 channels, 2.76 B parameters).

    Layout: 128 -> 64 (128 ch) -> 32 (256 ch) -> 16 (512 ch), 8 blocks per level (DBlock-1..3 / UBlock-3..1),
    text and context attention only at 16x16 (256 tokens per context image); text encoder 512 wide, 6 layers.
    Parameters: 244.7 M (context branch, both readers, 35.7 M = 14.6 %; the paper: 2.51 B -> 2.76 B, ~10 %).
    FLOPs per image (forward, XLA's count of the lowered program): 228.5 GFLOP per denoise step with context,
    432.5 GFLOP per training forward (text + 3 context images + denoise).
    Memory: ~3.6 GB for parameters + Adam + EMA (fp32), plus activations: an accelerator with more than 16 GB.
    Full-resolution input skip on, as in `tiny` (16.5 k parameters, 0.54 GFLOP): its first level down-samples too.
    """
    return ModelConfig(name="base", resolution=128, channels=128, channel_mult=(1, 2, 4), blocks_per_level=8,
                       attn_levels=(2,), head_dim=64, norm_groups=32, text_width=512, text_layers=6,
                       dtype="bfloat16", input_skip=True, ctx_query_pos=True, ctx_content_attn=True)


CONFIGS = {"tiny": tiny, "small": small, "base": base}


def get_config(name: str = "tiny", **overrides) -> ModelConfig:
    """The named config (`tiny | small | base`), with any field replaced: `get_config("tiny", dtype="bfloat16")`."""
    if name not in CONFIGS:
        raise ConfigError(f"get_config(name={name!r}): unknown config; use one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]()
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"get_config({name!r}, ...): no field(s) {unknown}; known fields: {sorted(known)}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def print_param_table(cfg: ModelConfig | str, flops: bool = True) -> dict:
    """Print (and return) parameters per component and forward FLOPs per image for `cfg` (built abstractly)."""
    from iimagen.model import flops_per_image, param_table

    cfg = get_config(cfg) if isinstance(cfg, str) else cfg
    table = param_table(cfg)
    print(f"config {cfg.name!r}: {cfg.resolution} px, widths {cfg.level_channels}, "
          f"{cfg.blocks_per_level} blocks/level, attention at levels {cfg.attn_levels}")
    for k, v in table.items():
        print(f"  {k:<26s} {v / 1e6:9.3f} M")
    out = {"params": table}
    if flops:  # XLA's cost analysis of the lowered forward: nothing is compiled, so `base` is a few seconds too
        fl = {"denoise (with context)": flops_per_image(cfg, with_context=True, what="denoise"),
              "denoise (text-to-image)": flops_per_image(cfg, with_context=False, what="denoise"),
              "call (with K contexts)": flops_per_image(cfg, with_context=True)}
        for k, v in fl.items():
            print(f"  FLOPs/image {k:<24s} {v / 1e9:9.3f} G")
        out["flops"] = fl
    return out
