"""Rendering: pixels as a pure function of (scene, resolution). Vectorised numpy, supersampled so 32 px still reads.

Each object is evaluated only inside its bounding window, on a 2x2 supersampled grid,
then box-filtered to a coverage map in [0, 1] and composited front-to-back order over the background. The per-object
coverage maps are kept (`Render.coverage`), so the controls (mask, depth, sketch, edge) and the ground truth
(boxes, visibility) come from the very same geometry as the pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .scene import BACKGROUNDS, COLOURS, Obj, Scene, WorldError

RESOLUTIONS = (32, 64, 128)


def check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution not in RESOLUTIONS:
        raise WorldError(f"resolution={resolution!r} is not supported; use one of {', '.join(map(str, RESOLUTIONS))}")
    return int(resolution)


# ------------------------------------------------------------------------------------------------ shapes (local frame)
def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a unit shape in its own frame (u right, v down, radius ~1)."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 < 0.9
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < 0.75
    if shape == "triangle":
        return (v < 0.6) & (v > -0.9 + 2.0 * abs(u))
    if shape == "diamond":
        return abs(u) * 0.8 + abs(v) < 0.95
    if shape == "star":
        th = np.arctan2(u, -v)
        return np.sqrt(r2) < 0.55 + 0.42 * np.cos(5 * th) ** 2 * (np.cos(5 * th) > 0)
    if shape == "hexagon":
        th = np.mod(np.arctan2(v, u), np.pi / 3) - np.pi / 6
        return np.sqrt(r2) * np.cos(th) < 0.82
    if shape == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.25
        return (x * x + y * y - 0.8) ** 3 - x * x * y ** 3 < 0
    if shape == "cross":
        return ((abs(u) < 0.3) & (abs(v) < 0.9)) | ((abs(v) < 0.3) & (abs(u) < 0.9))
    if shape == "ring":
        return (r2 < 0.92) & (r2 > 0.3)
    if shape == "crescent":
        return (r2 < 0.9) & ((u - 0.45) ** 2 + (v + 0.15) ** 2 > 0.55)
    raise WorldError(f"shape {shape!r} is unknown")


def _pattern(p: str, u, v, freq, angle):
    c, s = u.dtype.type(np.cos(angle)), u.dtype.type(np.sin(angle))
    a, b = u * c + v * s, v * c - u * s
    if p == "stripes":
        return np.sin(a * freq * np.pi) > 0
    if p == "dots":
        return (np.mod(a * freq, 1) - 0.5) ** 2 + (np.mod(b * freq, 1) - 0.5) ** 2 < 0.09
    if p == "checker":
        return (np.floor(a * freq) + np.floor(b * freq)) % 2 == 0
    if p == "rings":
        return np.sin(np.sqrt(u * u + v * v) * freq * 1.6 * np.pi) > 0
    if p == "zigzag":
        return np.sin((a + 0.25 * abs(np.mod(b * freq * 2, 2) - 1)) * freq * np.pi) > 0
    if p == "halves":
        return a > 0
    raise WorldError(f"pattern {p!r} is unknown")


def _part(p: str, u, v):
    """Mask of a subject's part, in the body frame; parts may stick out of the body."""
    if p == "eyes":
        return ((abs(u) - 0.32) ** 2 + (v + 0.2) ** 2) < 0.035
    if p == "ears":
        return (v < -0.55) & (v > -1.25) & (abs(abs(u) - 0.5) < (v + 1.25) * 0.35)
    if p == "antenna":
        return ((abs(u) < 0.07) & (v < -0.5) & (v > -1.1)) | ((u * u + (v + 1.15) ** 2) < 0.04)
    if p == "feet":
        return ((abs(u) - 0.4) ** 2 * 1.5 + (v - 0.95) ** 2) < 0.045
    return np.zeros(np.broadcast(u, v).shape, bool)


# How far each shape and part reaches from the object's centre, in units of its radius r (measured on a fine grid):
# an object is evaluated only inside the square window of that half-width.
EXTENT = {"circle": 0.95, "square": 1.06, "triangle": 0.96, "diamond": 1.19, "star": 0.97, "hexagon": 0.95,
          "heart": 1.0, "cross": 0.95, "ring": 0.96, "crescent": 0.95,
          "eyes": 0.57, "ears": 1.35, "antenna": 1.35, "feet": 1.24, "none": 0.0}


@lru_cache(maxsize=256)
def _box_lut(palette: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Box filter of a 2x2 supersampled cell as a lookup table: code = 64 a + 16 b + 4 c + d of the palette indices
    (0 = outside, 1..3 = colours) of the cell's samples -> (coverage, premultiplied colour), float32.

    The colour is summed in numpy's order for `mean(axis=(1, 3))` of a [h, 2, w, 2, 3] array, ((a + b) + c) + d in
    float32, then divided by 4, so the pixels are bit-identical to box-filtering the full supersampled image."""
    pal = np.zeros((4, 3), np.float32)
    pal[1:1 + len(palette)] = np.asarray(palette, np.float32)
    a, b, c, d = ((np.arange(256) >> k) & 3 for k in (6, 4, 2, 0))
    col = ((pal[a] + pal[b]) + pal[c]) + pal[d]
    cov = ((a > 0).astype(np.float32) + (b > 0) + (c > 0) + (d > 0))
    return cov / np.float32(4), col / np.float32(4)


def _object_layer(o: Obj, R: int, ss: int):
    """(y0, x0, coverage [h, w], premultiplied colour [h, w, 3]) of one object inside its window at resolution R.

    The object is evaluated on a 2x2 supersampled grid as a palette-index map (0 outside, then body colour, pattern
    colour, part colour) and box-filtered through `_box_lut` (one gather instead of full-colour supersampled
    arrays)."""
    if ss != 2:
        raise WorldError(f"supersampling ss={ss} is not supported; use 2")
    ext = o.r * (max(EXTENT[o.shape], EXTENT[o.subject.part] if o.subject is not None else 0) + 0.02)
    x0, x1 = max(0, int(np.floor((o.cx - ext) * R))), min(R, int(np.ceil((o.cx + ext) * R)))
    y0, y1 = max(0, int(np.floor((o.cy - ext) * R))), min(R, int(np.ceil((o.cy + ext) * R)))
    if x1 <= x0 or y1 <= y0:
        return y0, x0, np.zeros((0, 0), np.float32), np.zeros((0, 0, 3), np.float32)
    n = R * ss
    f32 = np.float32  # float32 throughout: half the memory traffic of float64, and numpy's SIMD sin/cos/arctan2
    xs = ((np.arange(x0 * ss, x1 * ss, dtype=f32) + f32(0.5)) / f32(n) - f32(o.cx)) / f32(o.r)
    ys = ((np.arange(y0 * ss, y1 * ss, dtype=f32) + f32(0.5)) / f32(n) - f32(o.cy)) / f32(o.r)
    X, Y = xs[None, :], ys[:, None]
    c, s = f32(np.cos(o.angle)), f32(np.sin(o.angle))
    u, v = X * c + Y * s, Y * c - X * s
    if o.flip:
        u = -u
    body = shape_mask(o.shape, u, v)
    if o.subject is None:
        idx = body.view(np.uint8)
        palette = (COLOURS[o.colour],)
    else:
        sj = o.subject
        part = _part(sj.part, u, v)
        pat = _pattern(sj.pattern, u, v, sj.freq, sj.angle)
        idx = np.where(part, np.uint8(3), (body * (pat.view(np.uint8) + np.uint8(1))).astype(np.uint8))
        palette = sj.colours
    code = (idx[0::2, 0::2] << 6) | (idx[0::2, 1::2] << 4) | (idx[1::2, 0::2] << 2) | idx[1::2, 1::2]
    cov_lut, col_lut = _box_lut(tuple(palette))
    return y0, x0, cov_lut[code], col_lut[code]


# ---------------------------------------------------------------------------------------------------- backgrounds
@lru_cache(maxsize=64)
def background(name: str, R: int) -> np.ndarray:
    """The background `name` at resolution R, float32 RxRx3 in [0, 1] (read-only, cached)."""
    y = ((np.arange(R) + 0.5) / R)[:, None, None]
    x = ((np.arange(R) + 0.5) / R)[None, :, None]
    ones = np.ones((R, R, 1), np.float32)

    def mix(a, b, t):
        return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t

    if name == "white":
        img = ones * np.asarray([0.96, 0.96, 0.94], np.float32)
    elif name == "sky":
        img = mix([0.45, 0.70, 0.98], [0.85, 0.93, 1.0], y) * ones
    elif name == "field":
        img = np.where(y < 0.4, mix([0.55, 0.78, 0.98], [0.8, 0.9, 1.0], y / 0.4),
                       mix([0.45, 0.75, 0.30], [0.25, 0.55, 0.15], (y - 0.4) / 0.6)) * ones
    elif name == "beach":
        img = np.where(y < 0.45, mix([0.2, 0.5, 0.8], [0.35, 0.7, 0.85], y / 0.45),
                       mix([0.93, 0.85, 0.62], [0.85, 0.74, 0.5], (y - 0.45) / 0.55)) * ones
    elif name == "night":
        img = mix([0.03, 0.04, 0.15], [0.10, 0.12, 0.30], y) * ones
        g = np.random.default_rng(3).random((R, R)) > 1 - 24 / (R * R)  # a few stars, the same at every call
        img = np.where(g[..., None], 0.95, img)
    elif name == "desert":
        img = np.where(y < 0.35, mix([0.98, 0.80, 0.55], [0.98, 0.88, 0.70], y / 0.35),
                       mix([0.90, 0.62, 0.30], [0.80, 0.50, 0.22], (y - 0.35) / 0.65)) * ones
    elif name == "snow":
        img = mix([0.80, 0.87, 0.95], [0.98, 0.99, 1.0], y) * ones
    elif name == "wood":
        grain = 0.5 + 0.5 * np.sin(y * 40 + 2 * np.sin(x * 6))
        img = mix([0.62, 0.42, 0.22], [0.72, 0.52, 0.30], grain) * ones
    else:
        raise WorldError(f"background {name!r} is unknown; use one of {', '.join(BACKGROUNDS)}")
    img = np.ascontiguousarray(img, np.float32)
    img.flags.writeable = False
    return img


# ---------------------------------------------------------------------------------------------------- rendering
@dataclass
class Render:
    """A rendered scene: `image` float32 RxRx3 in [0, 1] (unstyled) and per-object `coverage` [n, R, R] in [0, 1]
    (each object's own silhouette, before occlusion), index = z-order."""

    scene: Scene
    image: np.ndarray
    coverage: np.ndarray

    @property
    def resolution(self) -> int:
        return self.image.shape[0]

    def visible(self) -> np.ndarray:
        """[n, R, R]: how much of each pixel each object shows after occlusion by nearer objects."""
        vis = np.empty_like(self.coverage)
        rest = np.ones(self.coverage.shape[1:], np.float32)
        for i in range(len(self.coverage) - 1, -1, -1):
            vis[i] = self.coverage[i] * rest
            rest = rest * (1 - self.coverage[i])
        return vis


def render(scene: Scene, resolution: int) -> Render:
    """Pixels of `scene` at `resolution` (32/64/128), anti-aliased; deterministic."""
    R = check_resolution(resolution)
    ss = 2
    img = background(scene.background, R).copy()
    cov = np.zeros((len(scene.objects), R, R), np.float32)
    for i, o in enumerate(scene.objects):
        y0, x0, c, col = _object_layer(o, R, ss)
        h, w = c.shape
        if h == 0:
            continue
        cov[i, y0:y0 + h, x0:x0 + w] = c
        win = img[y0:y0 + h, x0:x0 + w]
        win *= (1 - c)[..., None]
        win += col
    np.minimum(np.maximum(img, 0, out=img), 1, out=img)  # = np.clip, without its Python-level overhead
    return Render(scene, img, cov)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.rint(np.minimum(np.maximum(img, 0), 1) * 255).astype(np.uint8)  # = round(clip(img, 0, 1) * 255)
