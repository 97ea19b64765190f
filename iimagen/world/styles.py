"""Styles: global renderings of any scene (the world's stand-in for WikiArt styles, paper Table 1).

A style is a function float RxRx3 [0, 1] -> float RxRx3 [0, 1] built from palette changes, quantisation, textures,
outlines and sampling grids. Textures are fixed per resolution (not random), and all scales are relative to the
image side, so a style looks the same on every scene and at every resolution: it is recognisable from one image.

Two kinds:
- **Procedural styles** (`Style`, world v2): a parametric family (hue rotation, saturation, gamma, quantisation,
  texture type / period / angle, outline) drawn fresh in training by `draw_style`, with a held-out region for
  evaluation (`HELD_OUT_STYLE_REGION`: hue rotation in [0.4, 0.6) *and* a dots or grid texture). Words cannot name
  one: only a reference image carries it. `Style.key` is a hash of its parameters. Every style reference uses them.
- **Named styles** (`STYLES`): 15 hand-made renderings ("mosaic", "neon"...) that text can name; text-to-image
  "artwork" captions use them (there the text is the only carrier), the 3 of `HELD_OUT_STYLES` never in training.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from .scene import WorldError, check_split, pick

STYLES = ("posterized", "sepia", "inverted", "monochrome", "outlined", "mosaic", "halftone", "pencil drawing",
          "watercolour", "neon", "pop art", "pastel", "linocut", "pointillism", "blueprint")
HELD_OUT_STYLES = ("linocut", "pointillism", "blueprint")  # never in any training sampler
TRAIN_STYLES = tuple(s for s in STYLES if s not in HELD_OUT_STYLES)
_LUM = np.asarray([0.299, 0.587, 0.114], np.float32)


def _lum(x):
    return x @ _LUM


def _edges(x):
    """Gradient magnitude of luminance (central differences), float RxR."""
    g = np.pad(_lum(x), 1, mode="edge")
    return np.hypot(g[1:-1, 2:] - g[1:-1, :-2], g[2:, 1:-1] - g[:-2, 1:-1])


def blur(x, n=1):
    for _ in range(n):
        p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
        x = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + 2 * p[1:-1, 1:-1]) / 6
    return x


def _rgb_to_hsv(x):
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    inv = 1 / (mx - mn + np.float32(1e-8))
    hr = (g - b) * inv
    hr += 6 * (hr < 0)  # = (g - b) / d % 6, as |g - b| <= d
    h = np.where(mx == r, hr, np.where(mx == g, (b - r) * inv + 2, (r - g) * inv + 4)) / 6
    return h, np.where(mx > 0, (mx - mn) / (mx + np.float32(1e-8)), 0).astype(x.dtype), mx


def _hsv_to_rgb(h, s, v):
    k = (np.asarray([5, 3, 1], h.dtype) + h[..., None] * 6) % 6
    return v[..., None] * (1 - s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1))


@lru_cache(maxsize=64)
def _grid(R: int, cells: int):
    """Cell index, (fy, fx) position inside the cell in [0, 1), for a `cells` x `cells` grid at resolution R."""
    c = (np.arange(R) + 0.5) * cells / R
    return np.floor(c).astype(int), c % 1


@lru_cache(maxsize=64)
def _paper(R: int):
    g = np.random.default_rng(5).random((R, R)).astype(np.float32)
    return 0.93 + 0.07 * g


def _cell_mean(x, cells):
    R = x.shape[0]
    idx, _ = _grid(R, cells)
    m = np.zeros((cells, cells, 3), np.float32)
    np.add.at(m, (idx[:, None], idx[None, :]), x)
    cnt = np.zeros((cells, cells), np.float32)
    np.add.at(cnt, (idx[:, None], idx[None, :]), 1)
    return (m / cnt[..., None])[idx[:, None], idx[None, :]]


TEXTURES = ("none", "lines", "dots", "grid", "hatch")
HELD_OUT_STYLE_REGION = {"hue": (0.4, 0.6), "textures": ("dots", "grid")}  # test styles: both, never in training


@dataclass(frozen=True)
class Style:
    """A procedural style: rotate hues by `hue`, scale saturation by `sat`, raise value to `gamma`, quantise to
    `levels` per channel (0: none), darken a `texture` of `period` (fraction of the side) at `angle`, draw an
    `outline` ("none" | "dark" | "light")."""

    hue: float
    sat: float
    gamma: float
    levels: int
    texture: str
    period: float
    angle: float
    outline: str

    @cached_property
    def key(self) -> str:
        """Style key: a hash of the parameters."""
        return "st" + hashlib.sha1(repr(tuple(self.params().values())).encode()).hexdigest()[:10]

    @property
    def held_out(self) -> bool:
        lo, hi = HELD_OUT_STYLE_REGION["hue"]
        return lo <= self.hue < hi and self.texture in HELD_OUT_STYLE_REGION["textures"]

    def params(self) -> dict:
        return {"hue": self.hue, "sat": self.sat, "gamma": self.gamma, "levels": self.levels,
                "texture": self.texture, "period": self.period, "angle": self.angle, "outline": self.outline}

    @classmethod
    def from_params(cls, d: dict) -> "Style":
        return cls(**{k: d[k] for k in ("hue", "sat", "gamma", "levels", "texture", "period", "angle", "outline")})


def draw_style(rng: np.random.Generator, split: str = "train") -> Style:
    """A fresh style from the family: the training region (`split='train'`) or the held-out one (`'test'`)."""
    check_split(split)
    lo, hi = HELD_OUT_STYLE_REGION["hue"]
    r = lambda x, n=3: round(float(x), n)  # noqa: E731
    if split == "test":  # rounded inside the region's half-open interval
        hue, texture = min(r(rng.uniform(lo, hi)), hi - 0.001), pick(rng, HELD_OUT_STYLE_REGION["textures"])
    else:
        hue, texture = r(rng.random()) % 1, pick(rng, TEXTURES)
        if lo <= hue < hi and texture in HELD_OUT_STYLE_REGION["textures"]:
            texture = pick(rng, [t for t in TEXTURES if t not in HELD_OUT_STYLE_REGION["textures"]])
    return Style(hue, r(pick(rng, (rng.uniform(0.0, 0.3), rng.uniform(0.8, 1.7)))), r(rng.uniform(0.6, 1.6)),
                 pick(rng, (0, 2, 3, 4)), texture, r(rng.uniform(0.1, 0.25)), r(rng.uniform(0, np.pi), 2),
                 pick(rng, ("none", "dark", "light")))


@lru_cache(maxsize=256)
def _texture_mask(R: int, texture: str, period: float, angle: float) -> np.ndarray:
    """The darkening factor [R, R, 1] of a texture (cached: a style is applied to its reference and its target)."""
    c = (np.arange(R, dtype=np.float32) + np.float32(0.5)) / np.float32(R * period)
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    a = c[None, :] * ca + c[:, None] * sa
    b = c[:, None] * ca - c[None, :] * sa
    fa, fb = a % 1, b % 1
    if texture == "lines":
        m = fa < 0.35
    elif texture == "dots":
        m = (fa - 0.5) ** 2 + (fb - 0.5) ** 2 < 0.09
    elif texture == "grid":
        m = (fa < 0.22) | (fb < 0.22)
    else:  # hatch
        m = (fa < 0.25) | ((a + b) % 1 < 0.25)
    out = (1 - np.float32(0.45) * m[..., None]).astype(np.float32)
    out.flags.writeable = False
    return out


def _procedural(x: np.ndarray, st: Style) -> np.ndarray:
    x = np.asarray(x, np.float32)
    h, s, v = _rgb_to_hsv(x)
    y = _hsv_to_rgb((h + np.float32(st.hue)) % 1, np.minimum(s * np.float32(st.sat), 1), np.power(v, np.float32(st.gamma)))
    if st.levels:
        y = np.round(y * np.float32(st.levels - 1)) / np.float32(st.levels - 1)
    if st.texture != "none":
        y = y * _texture_mask(x.shape[0], st.texture, st.period, st.angle)
    if st.outline != "none":
        e = np.clip(_edges(x) * 4 - 0.4, 0, 1)[..., None]
        y = y * (1 - e) if st.outline == "dark" else y + (1 - y) * e
    return y


def style_key(style) -> str | None:
    """The truth's name for a style: a named style's name, a procedural style's key, None for none."""
    return style.key if isinstance(style, Style) else style


def stylize(x: np.ndarray, style) -> np.ndarray:
    """Apply `style` (a procedural `Style`, a name in STYLES, or None for none) to float image x in [0, 1]."""
    if style is None:
        return x
    if isinstance(style, Style):
        return np.clip(np.asarray(_procedural(x, style), np.float32), 0, 1)
    R = x.shape[0]
    L = _lum(x)
    if style == "posterized":
        h, s, v = _rgb_to_hsv(x)
        y = np.round(_hsv_to_rgb(h, np.minimum(1, s * 1.4), v) * 2) / 2
    elif style == "sepia":
        y = np.clip(L[..., None] * np.asarray([1.07, 0.74, 0.43]) + np.asarray([0.1, 0.05, 0.0]), 0, 1)
    elif style == "inverted":
        y = 1 - x
    elif style == "monochrome":
        y = np.repeat(np.clip((L[..., None] - 0.5) * 1.6 + 0.5, 0, 1), 3, -1)
    elif style == "outlined":
        y = np.round(x * 3) / 3 * (1 - np.clip(_edges(x) * 4 - 0.4, 0, 1))[..., None]
    elif style == "mosaic":
        idx, f = _grid(R, 10)
        grout = (np.minimum(f, 1 - f) < 0.12)
        y = np.where((grout[:, None] | grout[None, :])[..., None], 0.15, _cell_mean(x, 10))
    elif style == "halftone":
        idx, f = _grid(R, max(8, R // 4))
        d = (f[:, None] - 0.5) ** 2 + (f[None, :] - 0.5) ** 2
        m = _cell_mean(x, max(8, R // 4))
        dot = d < (1 - _lum(m)) * 0.3 + 0.02
        y = np.where(dot[..., None], m * 0.7, 1.0)
    elif style == "pencil drawing":
        hatch = ((np.arange(R)[:, None] + np.arange(R)[None, :]) % 3 == 0)
        shade = np.where(hatch & (L < 0.55), 0.55, 1.0)
        y = np.repeat((_paper(R) * shade * (1 - np.clip(_edges(x) * 3, 0, 0.8)))[..., None], 3, -1)
    elif style == "watercolour":
        b = blur(x, 2 if R <= 32 else 3)
        y = (0.35 + 0.65 * b) * _paper(R)[..., None] * (1 - 0.5 * np.clip(_edges(b) * 3, 0, 1))[..., None]
    elif style == "neon":
        e = np.clip(_edges(x) * 4, 0, 1)
        h, s, v = _rgb_to_hsv(x)
        glow = _hsv_to_rgb(h, np.ones_like(s), np.ones_like(v))
        e = np.maximum(e, blur(e[..., None], 2)[..., 0] * 0.8)
        y = 0.05 + glow * e[..., None]
    elif style == "pop art":
        h, s, v = _rgb_to_hsv(x)
        y = _hsv_to_rgb((h + 0.5) % 1, np.ones_like(s) * 0.9, np.where(v > 0.5, 1.0, 0.55))
    elif style == "pastel":
        y = 0.5 * blur(x) + 0.5 * np.asarray([1.0, 0.95, 0.97])
    elif style == "linocut":
        lines = (np.arange(R)[:, None] * 2 - np.arange(R)[None, :]) % 4 < 2
        ink = (L < 0.35) | ((L < 0.7) & lines) | (_edges(x) > 0.15)
        y = np.where(ink[..., None], np.asarray([0.55, 0.1, 0.1]), np.asarray([0.96, 0.92, 0.82]))
    elif style == "pointillism":
        idx, f = _grid(R, max(8, R // 3))
        jit = np.random.default_rng(9).random((2, max(8, R // 3))) * 0.3 - 0.15
        d = (f[:, None] - 0.5 + jit[0][idx][:, None]) ** 2 + (f[None, :] - 0.5 + jit[1][idx][None, :]) ** 2
        h, s, v = _rgb_to_hsv(_cell_mean(x, max(8, R // 3)))
        y = np.where((d < 0.16)[..., None], _hsv_to_rgb(h, np.minimum(1, s * 1.5), v), 0.97)
    elif style == "blueprint":
        idx, f = _grid(R, 8)
        grid = (f[:, None] < 0.06) | (f[None, :] < 0.06)
        e = np.clip(_edges(x) * 5, 0, 1)
        y = np.asarray([0.1, 0.25, 0.6]) + (np.maximum(e, 0.25 * grid))[..., None] * np.asarray([0.85, 0.7, 0.4])
    else:
        raise WorldError(f"style {style!r} is unknown; use one of {', '.join(STYLES)} (or None)")
    return np.clip(np.asarray(y, np.float32), 0, 1)
