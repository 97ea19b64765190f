"""Scenes as data: the vocabulary of the world, subjects, and seeded scene sampling (no pixels here).

A `Scene` is a background plus a z-ordered tuple of `Obj` (later = nearer, drawn on top). An `Obj` is either a plain
shape with a named colour (words can say everything about it) or an instance of a `Subject`, whose look (body shape,
three colours on a continuous range, a pattern with its frequency and angle, a part) words cannot give: only reference
images can.

Subjects (world v2) come from a procedural family far too large to memorise (`draw_subject`): 7 body shapes x 6
patterns x 5 parts x continuous colours, frequency and angle, well over 10^5 looks that differ at 32 px. Training
draws identities fresh, so the only way to draw the right subject is to read its reference. Evaluation identities
come from a held-out region of the family that no training draw can produce (`HELD_OUT_REGION`: body hue in
[0.55, 0.72) *and* a dots or rings pattern; each factor alone is seen in training, their combination never).
A subject's identity key (`Subject.key`) is a hash of its parameters: two objects show the same identity exactly when
their keys are equal. A small named `GALLERY` stays for the notebooks' hand-made examples.
Everything is deterministic in the numpy `Generator` passed in.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "heart", "cross", "ring", "crescent")
BODY_SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "heart")  # room for a pattern
COLOURS = {  # name -> RGB in [0, 1]
    "red": (0.86, 0.12, 0.12), "orange": (1.0, 0.55, 0.05), "yellow": (0.98, 0.86, 0.10),
    "green": (0.15, 0.65, 0.20), "teal": (0.05, 0.60, 0.60), "blue": (0.12, 0.30, 0.90),
    "purple": (0.55, 0.20, 0.75), "pink": (1.0, 0.50, 0.75), "brown": (0.50, 0.30, 0.12),
    "grey": (0.50, 0.50, 0.50),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = {"small": (0.10, 0.13), "medium": (0.15, 0.19), "large": (0.22, 0.27)}  # radius as a fraction of the side
SUBJECT_R = (0.25, 0.32)  # a subject's radius: its box is a median ~27 % of the frame (prominence, world v2)
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
SPLITS = ("train", "test")
HELD_OUT_REGION = {"hue": (0.55, 0.72), "patterns": ("dots", "rings")}  # test identities: both, never in training


class WorldError(ValueError):
    """Bad input to the world (resolution, style, task, split, subject...); the message names the field and the fix."""


def check_split(split) -> str:
    if split not in SPLITS:
        raise WorldError(f"split={split!r} is unknown; use 'train' (the training region of the subject and style "
                         f"families) or 'test' (the held-out region)")
    return split


def _hsv(h, s, v):
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


@dataclass(frozen=True)
class Subject:
    """An identity: body `shape`; `hsv` the HSV triples of c1 (body), c2 (pattern), c3 (part); a `pattern` with a
    frequency and angle (in the body's own frame, so it turns with the pose); a `part`. `name` is only set for the
    named gallery and is not part of the identity."""

    shape: str
    hsv: tuple
    pattern: str
    freq: float
    angle: float
    part: str
    name: str = field(default="", compare=False)

    @cached_property
    def colours(self) -> tuple:
        return tuple(tuple(float(c) for c in _hsv(*t)) for t in self.hsv)

    @cached_property
    def key(self) -> str:
        """Identity key: a hash of the look's parameters (the same at every resolution and pose)."""
        return _key("subject", (self.shape, self.hsv, self.pattern, self.freq, self.angle, self.part))

    @property
    def held_out(self) -> bool:
        lo, hi = HELD_OUT_REGION["hue"]
        return lo <= self.hsv[0][0] < hi and self.pattern in HELD_OUT_REGION["patterns"]

    def params(self) -> dict:
        return {"shape": self.shape, "hsv": [list(t) for t in self.hsv], "pattern": self.pattern, "freq": self.freq,
                "angle": self.angle, "part": self.part, "name": self.name}

    @classmethod
    def from_params(cls, d: dict) -> "Subject":
        return cls(d["shape"], tuple(tuple(t) for t in d["hsv"]), d["pattern"], d["freq"], d["angle"], d["part"],
                   d.get("name", ""))


def _key(kind: str, params) -> str:
    return kind[:2] + hashlib.sha1(repr(params).encode()).hexdigest()[:10]


def _r(x, n=3):
    return round(float(x), n)


def pick(rng: np.random.Generator, seq, p=None):
    """One item of `seq` (with probabilities `p`): the same draw as `rng.choice(seq, p=p)`, the same item as a Python
    value, about 7 times faster (numpy's choice converts the list to an array on every call; the world draws tens of
    thousands of items per second)."""
    if p is None:
        return seq[int(rng.integers(len(seq)))]
    cdf = np.cumsum(p)
    return seq[int(np.searchsorted(cdf / cdf[-1], rng.random(), side="right"))]


def draw_subject(rng: np.random.Generator, split: str = "train") -> Subject:
    """A fresh identity from the family: the training region (`split='train'`, what every training sampler draws)
    or the held-out region (`'test'`, evaluation only)."""
    check_split(split)
    lo, hi = HELD_OUT_REGION["hue"]
    shape = pick(rng, BODY_SHAPES)
    if split == "test":
        h1, pattern = min(_r(rng.uniform(lo, hi)), hi - 0.001), pick(rng, HELD_OUT_REGION["patterns"])
    else:
        h1, pattern = _r(rng.random()) % 1, pick(rng, PATTERNS)
        if lo <= h1 < hi and pattern in HELD_OUT_REGION["patterns"]:
            pattern = pick(rng, [p for p in PATTERNS if p not in HELD_OUT_REGION["patterns"]])
    hsv = ((h1, _r(rng.uniform(0.55, 0.95)), _r(rng.uniform(0.6, 0.95))),
           (_r((h1 + rng.uniform(0.25, 0.75)) % 1) % 1, _r(rng.uniform(0.5, 1.0)), _r(rng.uniform(0.3, 1.0))),
           (_r(rng.random()), _r(rng.uniform(0.0, 1.0)), _r(pick(rng, (0.1, 0.95)))))
    return Subject(shape, hsv, pattern, _r(rng.uniform(2.0, 4.5), 2), _r(rng.uniform(0, np.pi), 2),
                   pick(rng, PARTS))


_ONSETS, _NUCLEI, _CODAS = list("bdfgklmnprstvz") + ["sh", "qu"], list("aeiou") + ["oo", "ai"], \
    list("bdgklmnrsxz") + [""]


def _word(rng) -> str:
    """A pronounceable made-up word of one or two syllables (subject names and nonce names)."""
    k = rng.integers(1, 3)
    return "".join(pick(rng, _ONSETS) + pick(rng, _NUCLEI) for _ in range(k)) + pick(rng, _CODAS)


def _gallery(n_train: int = 12, n_test: int = 4, seed: int = 11) -> tuple:
    rng = np.random.default_rng(seed)
    out, names = [], set()
    for split in ["train"] * n_train + ["test"] * n_test:
        name = _word(rng)
        while not 3 <= len(name) <= 7 or name in names:
            name = _word(rng)
        names.add(name)
        out.append(replace(draw_subject(rng, split), name=name))
    return tuple(out)


SUBJECTS = _gallery()  # the named gallery (notebooks, the Composer); the last 4 are in the held-out region
SUBJECT_NAMES = tuple(s.name for s in SUBJECTS)
SUBJECT_BY_NAME = {s.name: s for s in SUBJECTS}


def nonce_name(rng, avoid=()) -> str:
    """A made-up name for one example's subject (never a gallery name, nor one in `avoid`). Training names subjects
    this way, so that only the reference images say which subject it is (as the paper's "[ref#1] a dog")."""
    while True:
        name = _word(rng)
        if 3 <= len(name) <= 8 and name not in SUBJECT_BY_NAME and name not in avoid:
            return name


def subject_name(s: "Subject") -> str:
    """What a caption calls `s` when no name is given: its gallery name, or a made-up word fixed by its key."""
    return s.name or nonce_name(np.random.default_rng(int(s.key[2:], 16)))


@dataclass(frozen=True)
class Obj:
    """One object: a plain `shape` in a named `colour`, or (`subject` set) an instance of a Subject.
    (cx, cy) centre and `r` radius are fractions of the image side; `angle` in radians; `flip` mirrors it."""

    shape: str
    colour: str | None = None
    subject: Subject | None = None
    cx: float = 0.5
    cy: float = 0.5
    r: float = 0.18
    angle: float = 0.0
    flip: bool = False

    @property
    def size(self) -> str:
        return next((k for k, (lo, hi) in SIZES.items() if self.r <= hi + 1e-9), "large")

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
    def identities(self) -> list[Subject]:
        """The subjects shown, farthest first."""
        return [o.subject for o in self.objects if o.subject is not None]

    @property
    def subjects(self) -> list[str]:
        """The identity keys of the subjects shown, farthest first."""
        return [s.key for s in self.identities]


def _place(rng, r, others, tries=30):
    """A centre for radius r that keeps every object mostly visible (centres at least 0.6*(r1+r2) apart)."""
    for _ in range(tries):
        cx, cy = rng.uniform(r * 0.9, 1 - r * 0.9, size=2)
        if all(np.hypot(cx - o.cx, cy - o.cy) > 0.6 * (r + o.r) for o in others):
            return float(cx), float(cy)
    return float(cx), float(cy)


def random_object(rng, others=(), subject: Subject | None = None, size: str | None = None) -> Obj:
    """A plain shape, or an instance of `subject` large in the frame (radius in SUBJECT_R) in a new pose: rotation
    up to +-45 deg, maybe mirrored."""
    if subject is not None:
        if not isinstance(subject, Subject):
            raise WorldError(f"subject={subject!r} must be a world.Subject (draw one with world.draw_subject, or take "
                             f"one from world.SUBJECT_BY_NAME)")
        r = float(rng.uniform(*SUBJECT_R))
        cx, cy = _place(rng, r, others)
        return Obj(subject.shape, None, subject, cx, cy, r, float(rng.uniform(-np.pi / 4, np.pi / 4)),
                   bool(rng.random() < 0.5))
    size = size or pick(rng, list(SIZES), p=(0.3, 0.4, 0.3))
    r = float(rng.uniform(*SIZES[size]))
    cx, cy = _place(rng, r, others)
    return Obj(pick(rng, SHAPES), pick(rng, COLOUR_NAMES), None, cx, cy, r,
               float(rng.uniform(-0.3, 0.3)), False)


def random_scene(rng, n_objects: int | None = None, subjects=(), background: str | None = None) -> Scene:
    """A scene of 1-3 plain objects, or (with `subjects`, a list of Subject) one large instance of each subject plus
    small or medium company up to `n_objects` (default: at most two other objects), in random z-order."""
    objs: list[Obj] = []
    for s in subjects:
        objs.append(random_object(rng, objs, subject=s))
    if subjects:
        n = len(objs) + int(rng.integers(0, 3)) if n_objects is None else n_objects
        for _ in range(max(0, n - len(objs))):
            objs.append(random_object(rng, objs, size=pick(rng, ("small", "medium"))))
    else:
        n = int(rng.integers(1, 4)) if n_objects is None else n_objects
        for _ in range(n):
            objs.append(random_object(rng, objs))
    order = rng.permutation(len(objs))
    bg = background or pick(rng, BACKGROUND_NAMES)
    return Scene(bg, tuple(objs[i] for i in order))


def repose(rng, scene: Scene) -> Scene:
    """The same scene's subjects in new poses and places, with new company and background (subject references)."""
    return random_scene(rng, n_objects=len(scene.identities) + int(rng.integers(0, 2)), subjects=scene.identities)


__all__ = ["SHAPES", "BODY_SHAPES", "COLOURS", "COLOUR_NAMES", "SIZES", "SUBJECT_R", "BACKGROUNDS", "BACKGROUND_NAMES",
           "POSITIONS", "PATTERNS", "PARTS", "SPLITS", "HELD_OUT_REGION", "WorldError", "check_split", "Subject",
           "draw_subject", "SUBJECTS", "SUBJECT_NAMES", "SUBJECT_BY_NAME", "nonce_name", "subject_name", "Obj",
           "Scene", "random_object", "random_scene", "repose", "replace"]
