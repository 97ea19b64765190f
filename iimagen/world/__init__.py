"""The synthetic world: the kit's embedded dataset, with exact ground truth (paper §3.2 / Table 1, mapped to shapes).

    >>> from iimagen import world
    >>> rng = np.random.default_rng(0)
    >>> scene = world.random_scene(rng)
    >>> ex = world.make(scene, 64, style="mosaic")          # image uint8 64x64x3 + truth dict
    >>> depth = world.control(world.render(scene, 64), "depth")

Parts: `scene` (vocabulary, subjects, scene sampling; pure data), `render` (pixels), `styles` (global renderings),
`controls` (edge/depth/mask/sketch), `captions` (phrasings, `caption_corpus`). Everything is deterministic in the seed.
"""
from __future__ import annotations

import numpy as np

from .captions import ART_PHRASINGS, PHRASINGS, caption, caption_corpus, object_phrase
from .controls import CONTROLS, control, depth_map, depth_value, edge_map, mask_map, region_ids, sketch_map
from .render import RESOLUTIONS, Render, WorldError, background, check_resolution, render, to_uint8
from .scene import (BACKGROUND_NAMES, BACKGROUNDS, BODY_SHAPES, COLOUR_NAMES, COLOURS, HELD_OUT_REGION, PARTS,
                    PATTERNS, POSITIONS, SHAPES, SIZES, SPLITS, SUBJECT_BY_NAME, SUBJECT_NAMES, SUBJECT_R, SUBJECTS,
                    Obj, Scene, Subject, check_split, draw_subject, nonce_name, pick, random_object, random_scene, repose,
                    subject_name)
from .styles import (HELD_OUT_STYLE_REGION, HELD_OUT_STYLES, STYLES, TEXTURES, TRAIN_STYLES, Style, draw_style,
                     style_key, stylize)


VERSION = "v2"  # world v2: procedural subjects and styles (recorded in every export's meta as "world")


def truth(r: Render, style: str | None = None, caption_text: str | None = None) -> dict:
    """Ground truth of a render: background, style (a named style's name or a procedural style's key), subjects (their
    identity keys), and per object its attributes (a subject by its key), z-index, box [x0, y0, x1, y1] (fractions
    of the side, from its own silhouette at >= 50 % coverage) and visible fraction."""
    R = r.resolution
    vis = r.visible()
    objs = []
    for i, (o, c) in enumerate(zip(r.scene.objects, r.coverage)):
        ys, xs = np.nonzero(c >= 0.5)
        box = [float(xs.min()) / R, float(ys.min()) / R, float(xs.max() + 1) / R, float(ys.max() + 1) / R] \
            if len(xs) else [0.0, 0.0, 0.0, 0.0]
        area = float(c.sum())
        objs.append({"z": i, "shape": o.shape, "colour": o.colour, "subject": o.subject.key if o.subject else None, "size": o.size,
                     "position": o.position, "box": box, "visible": float(vis[i].sum()) / area if area else 0.0})
    return {"background": r.scene.background, "style": style_key(style), "subjects": r.scene.subjects, "objects": objs,
            "caption": caption_text}


def make(scene: Scene, resolution: int, style: str | None = None) -> tuple[np.ndarray, Render]:
    """(uint8 image with `style` applied, the unstyled Render) of a scene."""
    r = render(scene, resolution)
    return to_uint8(stylize(r.image, style)), r


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations", "np")]
