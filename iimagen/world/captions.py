"""Captions from a scene's attributes (>= 10 phrasings), "artwork" captions that name a style, and the caption corpus
the tokenizer is built from."""
from __future__ import annotations

import numpy as np

from .scene import (BACKGROUNDS, COLOUR_NAMES, POSITIONS, SHAPES, SIZES, SUBJECT_NAMES, Obj, Scene, pick,
                    subject_name)
from .styles import STYLES

PHRASINGS = (
    "{objs} {bg}", "a picture of {objs} {bg}", "an image showing {objs} {bg}", "a scene {bg} with {objs}",
    "there is {objs} {bg}", "a photo of {objs} {bg}", "{objs}, {bg}", "a view of {objs} {bg}",
    "here we see {objs} {bg}", "{bg}: {objs}", "a snapshot of {objs} {bg}", "{objs} can be seen {bg}",
)
ART_PHRASINGS = (
    "a {style} artwork of {objs} {bg}", "{objs} {bg}, in the {style} style", "a {style} rendering of {objs} {bg}",
    "{style} art: {objs} {bg}", "an artwork in {style} style showing {objs} {bg}",
)


def object_phrase(o: Obj, with_position: bool = True, names: dict | None = None) -> str:
    """How a caption names `o`; `names` maps a subject's key to the name the text uses (default: `subject_name`)."""
    if o.subject is not None:
        name = (names or {}).get(o.subject.key) or subject_name(o.subject)
    else:
        name = f"a {o.size} {o.colour} {o.shape}"
    return f"{name} {o.position}" if with_position else name


def _join(parts):
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene, rng: np.random.Generator, style: str | None = None, positions: bool | None = None,
            names: dict | None = None) -> str:
    """A caption of `scene` in a random phrasing; with `style`, an artwork caption that names it. Objects are listed
    nearest first (the order a person would name them). `names`: subject key -> the name to call it (nonce names)."""
    if positions is None:
        positions = bool(rng.random() < 0.7)
    objs = _join([object_phrase(o, positions, names) for o in reversed(scene.objects)]) or "nothing"
    bg = BACKGROUNDS[scene.background]
    if style:
        return pick(rng, ART_PHRASINGS).format(style=style, objs=objs, bg=bg)
    return pick(rng, PHRASINGS).format(objs=objs, bg=bg)


def caption_corpus() -> list[str]:
    """Sentences that together use the whole caption vocabulary: every phrasing, shape, colour, size, position,
    background, subject name and style name. The tokenizer builder trains on it (with the templates)."""
    out = []
    for i, p in enumerate(PHRASINGS + ART_PHRASINGS):
        out.append(p.format(objs="a small red star on the left and zib", bg=BACKGROUNDS["beach"],
                            style=STYLES[i % len(STYLES)]))
    for s in SHAPES:
        for c in COLOUR_NAMES:
            for z in SIZES:
                out.append(f"a {z} {c} {s}")
    for row in POSITIONS:
        for p in row:
            out.append(f"a large blue circle {p}")
    for b in BACKGROUNDS.values():
        out.append(f"a medium green heart {b}")
    for n in SUBJECT_NAMES:
        out.append(f"{n} in the centre on a white background")
        out.append(n)
    for st in STYLES:
        out.append(f"a {st} artwork of a small pink ring at the top in the snow")
        out.append(st)
    return out
