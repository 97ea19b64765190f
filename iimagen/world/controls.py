"""Control maps from a `Render` (paper Table 1: depth, mask, edge incl. sketch), uint8 HxWx3.

- mask: object silhouettes (white on black), like a salient-object mask.
- depth: from the z-order, nearer = brighter; the background is a dim floor (brighter towards the bottom).
- sketch: thin contours of every visible object region (black on white), like Photo-Sketching.
- edge: Canny edges (scikit-image) of the image, the depth map or the mask, then a random dilation: the paper's
  augmentation (App. A.3.2) for coarse and fine contours of varying thickness (white on black, like HED).
"""
from __future__ import annotations

import numpy as np

from .render import Render, WorldError, to_uint8
from .scene import pick

CONTROLS = ("edge", "depth", "mask", "sketch")
Z_LEVELS = 4  # depth values are absolute: object at z-index i has depth 0.4 + 0.6 * (min(i, 3) + 1) / 4


def depth_value(i: int) -> float:
    return 0.4 + 0.6 * (min(i, Z_LEVELS - 1) + 1) / Z_LEVELS


def _grey3(x: np.ndarray) -> np.ndarray:
    return np.repeat(to_uint8(x)[..., None], 3, axis=-1)


def mask_map(r: Render) -> np.ndarray:
    return _grey3((r.coverage.max(axis=0, initial=0.0) >= 0.5).astype(np.float32))


def depth_float(r: Render) -> np.ndarray:
    R = r.resolution
    d = np.broadcast_to(0.05 + 0.2 * ((np.arange(R) + 0.5) / R)[:, None], (R, R)).astype(np.float32)
    for i, c in enumerate(r.coverage):
        d = d * (1 - c) + c * depth_value(i)
    return d


def depth_map(r: Render) -> np.ndarray:
    return _grey3(depth_float(r))


def region_ids(r: Render) -> np.ndarray:
    """RxR int map: index of the nearest object covering each pixel at >= 50 %, -1 for background."""
    ids = np.full(r.coverage.shape[1:], -1, np.int32)
    for i, c in enumerate(r.coverage):
        ids[c >= 0.5] = i
    return ids


def sketch_map(r: Render) -> np.ndarray:
    ids = region_ids(r)
    line = np.zeros(ids.shape, bool)
    line[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    line[1:, :] |= ids[1:, :] != ids[:-1, :]
    return _grey3(1.0 - line)


def _dilate(m: np.ndarray, n: int) -> np.ndarray:
    for _ in range(n):
        p = np.pad(m, 1)
        m = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return m


def edge_map(r: Render, rng: np.random.Generator | None = None, source: str | None = None,
             dilation: int | None = None) -> np.ndarray:
    """Canny edges of `source` in {image, depth, mask} (random when None), dilated `dilation` times (random when
    None: 0-1 at 32/64 px, 0-2 at 128 px)."""
    from skimage.feature import canny

    rng = rng if rng is not None else np.random.default_rng(0)
    source = source or pick(rng, ("image", "depth", "mask"), p=(0.5, 0.25, 0.25))
    if source == "image":
        x = r.image @ np.asarray([0.299, 0.587, 0.114], np.float32)
    elif source == "depth":
        x = depth_float(r)
    elif source == "mask":
        x = r.coverage.max(axis=0, initial=0.0)
    else:
        raise WorldError(f"edge source {source!r} is unknown; use image, depth or mask")
    e = canny(x.astype(np.float64), sigma=1.0 if r.resolution <= 64 else 1.5, low_threshold=0.05,
              high_threshold=0.12)
    if dilation is None:
        dilation = int(rng.integers(0, 2 if r.resolution <= 64 else 3))
    return _grey3(_dilate(e, dilation).astype(np.float32))


def control(r: Render, kind: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """The control map `kind` (edge | depth | mask | sketch) of a render, uint8 RxRx3."""
    if kind == "edge":
        return edge_map(r, rng)
    if kind == "depth":
        return depth_map(r)
    if kind == "mask":
        return mask_map(r)
    if kind == "sketch":
        return sketch_map(r)
    raise WorldError(f"control kind {kind!r} is unknown; use one of {', '.join(CONTROLS)}")
