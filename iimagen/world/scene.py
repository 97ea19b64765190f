"""Scenes as data: the vocabulary of the world, subjects, and seeded scene sampling (no pixels here).

A `Scene` is a background plus a z-ordered tuple of `Obj` (later = nearer, drawn on top). An `Obj` is either a plain
shape with a named colour (words can say everything about it) or an instance of a named `Subject`, whose look (body
shape, 2-3 colours off the named palette, a multi-part pattern, a part) words cannot give: only reference images can.
Everything is deterministic in the numpy `Generator` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "heart", "cross", "ring", "crescent")
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.86, 0.12, 0.12), "orange": (1.0, 0.55, 0.05), "yellow": (0.98, 0.86, 0.10),
    "green": (0.15, 0.65, 0.20), "teal": (0.05, 0.60, 0.60), "blue": (0.12, 0.30, 0.90),
    "purple": (0.55, 0.20, 0.75), "pink": (1.0, 0.50, 0.75), "brown": (0.50, 0.30, 0.12),
    "grey": (0.50, 0.50, 0.50),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = {"small": (0.10, 0.13), "medium": (0.15, 0.19), "large": (0.22, 0.27)}  # radius as a fraction of the side
BACKGROUNDS = {  # name -> caption phrase
    "white": "on a white background", "sky": "in the sky", "field": "in a grassy field", "beach": "on a beach",
    "night": "at night", "desert": "in a desert", "snow": "in the snow", "wood": "on a wooden table",
}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
POSITIONS = (("in the top left", "at the top", "in the top right"),
             ("on the left", "in the centre", "on the right"),
             ("in the bottom left", "at the bottom", "in the bottom right"))
PATTERNS = ("stripes", "dots", "checker", "rings", "zigzag", "halves")
PARTS = ("none", "eyes", "ears", "antenna", "feet")


@dataclass(frozen=True)
class Subject:
    """A named identity: its look is a body shape, colours c1 (body) c2 (pattern) c3 (part), a pattern with a
    frequency and angle (in the body's own frame, so it turns with the pose), and a part."""

    name: str
    shape: str
    colours: tuple  # three RGB triples in [0, 1]
    pattern: str
    freq: float
    angle: float
    part: str


_ONSETS, _NUCLEI, _CODAS = list("bdfgklmnprstvz") + ["sh", "qu"], list("aeiou") + ["oo", "ai"], \
    list("bdgklmnrsxz") + [""]


def _word(rng) -> str:
    """A pronounceable made-up word of one or two syllables (subject names and nonce names)."""
    k = rng.integers(1, 3)
    return "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) for _ in range(k)) + rng.choice(_CODAS)


def _subject_names(n: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    names = []
    while len(names) < n:
        name = _word(rng)
        if 3 <= len(name) <= 7 and name not in names:
            names.append(name)
    return names


def _hsv(h, s, v):
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _make_subjects(n: int = 60, seed: int = 11) -> tuple:
    rng = np.random.default_rng(seed)
    out = []
    for name in _subject_names(n):
        h = rng.random()
        cols = (_hsv(h, rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.95)),
                _hsv((h + rng.uniform(0.25, 0.75)) % 1, rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0)),
                _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.choice([0.1, 0.95])))
        cols = tuple(tuple(round(float(c), 3) for c in col) for col in cols)
        out.append(Subject(name, str(rng.choice([s for s in SHAPES if s not in ("ring", "cross", "crescent")])),
                           cols, str(rng.choice(PATTERNS)), float(rng.choice([2.0, 3.0, 4.0])),
                           float(rng.uniform(0, np.pi)), str(rng.choice(PARTS))))
    return tuple(out)


SUBJECTS = _make_subjects()
SUBJECT_NAMES = tuple(s.name for s in SUBJECTS)
SUBJECT_BY_NAME = {s.name: s for s in SUBJECTS}
HELD_OUT_SUBJECTS = SUBJECT_NAMES[-10:]  # never in any training sampler; for evaluation only
TRAIN_SUBJECTS = SUBJECT_NAMES[:-10]


def nonce_name(rng, avoid=()) -> str:
    """A made-up name for one example's subject, never a subject's own name (nor one in `avoid`). Training names
    subjects this way, so that only the reference images say which subject it is (as the paper's "[ref#1] a dog")."""
    while True:
        name = _word(rng)
        if 3 <= len(name) <= 8 and name not in SUBJECT_BY_NAME and name not in avoid:
            return name


@dataclass(frozen=True)
class Obj:
    """One object: a plain `shape` in a named `colour`, or (`subject` set) an instance of a Subject.
    (cx, cy) centre and `r` radius are fractions of the image side; `angle` in radians; `flip` mirrors it."""

    shape: str
    colour: str | None = None
    subject: str | None = None
    cx: float = 0.5
    cy: float = 0.5
    r: float = 0.18
    angle: float = 0.0
    flip: bool = False

    @property
    def size(self) -> str:
        return next(k for k, (lo, hi) in SIZES.items() if self.r <= hi + 1e-9)

    @property
    def position(self) -> str:
        col, row = (min(2, int(self.cx * 3)), min(2, int(self.cy * 3)))
        return POSITIONS[row][col]


@dataclass(frozen=True)
class Scene:
    """A background and z-ordered objects (index 0 farthest). The style is applied at render time, not stored."""

    background: str
    objects: tuple = field(default_factory=tuple)

    @property
    def subjects(self) -> list[str]:
        return [o.subject for o in self.objects if o.subject]


def _place(rng, r, others, tries=30):
    """A centre for radius r that keeps every object mostly visible (centres at least 0.6*(r1+r2) apart)."""
    for _ in range(tries):
        cx, cy = rng.uniform(r * 0.9, 1 - r * 0.9, size=2)
        if all(np.hypot(cx - o.cx, cy - o.cy) > 0.6 * (r + o.r) for o in others):
            return float(cx), float(cy)
    return float(cx), float(cy)


def random_object(rng, others=(), subject: str | None = None, size: str | None = None) -> Obj:
    """A plain shape (or an instance of `subject` in a new pose: rotation up to +-45 deg, maybe mirrored)."""
    size = size or str(rng.choice(list(SIZES), p=[0.3, 0.4, 0.3]))
    r = float(rng.uniform(*SIZES[size]))
    if subject is not None:
        r = max(r, 0.15)  # subjects need room for their pattern
        cx, cy = _place(rng, r, others)
        return Obj(SUBJECT_BY_NAME[subject].shape, None, subject, cx, cy, r,
                   float(rng.uniform(-np.pi / 4, np.pi / 4)), bool(rng.random() < 0.5))
    cx, cy = _place(rng, r, others)
    return Obj(str(rng.choice(SHAPES)), str(rng.choice(COLOUR_NAMES)), None, cx, cy, r,
               float(rng.uniform(-0.3, 0.3)), False)


def random_scene(rng, n_objects: int | None = None, subjects=(), background: str | None = None) -> Scene:
    """A scene of 1-3 plain objects plus one instance per name in `subjects`, in random z-order."""
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    objs: list[Obj] = []
    for s in subjects:
        objs.append(random_object(rng, objs, subject=s))
    for _ in range(max(0, n - len(objs)) if subjects else n):
        objs.append(random_object(rng, objs, size=None if not subjects else str(rng.choice(["small", "medium"]))))
    order = rng.permutation(len(objs))
    bg = background or str(rng.choice(BACKGROUND_NAMES))
    return Scene(bg, tuple(objs[i] for i in order))


def repose(rng, scene: Scene) -> Scene:
    """The same scene's subjects in new poses and places, with new company and background (subject references)."""
    return random_scene(rng, n_objects=int(rng.integers(1, 3)), subjects=scene.subjects)


__all__ = ["SHAPES", "COLOURS", "COLOUR_NAMES", "SIZES", "BACKGROUNDS", "BACKGROUND_NAMES", "POSITIONS", "PATTERNS",
           "PARTS", "Subject", "SUBJECTS", "SUBJECT_NAMES", "SUBJECT_BY_NAME", "HELD_OUT_SUBJECTS", "TRAIN_SUBJECTS",
           "Obj", "Scene", "nonce_name", "random_object", "random_scene", "repose", "replace"]
