"""The tasks of both training stages, mapped to the synthetic world (paper §3.2, Table 1, App. A.3).

- Stage 1, retrieval-augmented training (App. A.3.1): clusters of 5 similar-but-not-duplicate examples found by
  embedding k-NN (`iimagen.retrieval`); an example is 1 target + 3 neighbours as context with their *raw* captions
  (no template, kind "reference"; in training each subject is called by a nonce name); 10 % drop text+context,
  10 % drop context (`RetrievalPool`).
- Stage 2, instruction tuning on the mixture of Table 1 (`STAGE2_MIXTURE`): text-to-image 0.20 (0.15 plain + 0.05
  "artwork" captions that name a style), control 0.20 (depth/mask/edge 0.06 each, sketch 0.02), subject 0.40,
  styled generation 0.10, style transfer 0.10.
- World v2: every subject is a fresh identity of the procedural family (`world.draw_subject`) and every style
  reference a fresh procedural style (`world.draw_style`), from the training region in training and the held-out
  region for `split='test'`; no identity recurs often enough to be learnt by heart, so only the references carry
  them. The truth names subjects and styles by their keys.
- Zero-shot compositions (`ZERO_SHOT_TASKS`: style+subject, multi-subject, control+subject, control+style) are
  evaluation-only: `draw_spec(..., training=True)` refuses them, and every training spec is checked by
  `check_training` (no composition, no held-out subject or style) before it is returned.

Sampling is split in two: `draw_spec` (cheap; scenes, styles, texts as data) and `realize` (pixels). Everything is
deterministic in the seed: `sample(task, n, seed, resolution)` gives the same bytes every time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import world as W
from .world import WorldError

TASK_NAMES = ("text_to_image", "edge_to_image", "depth_to_image", "mask_to_image", "sketch_to_image", "subject",
              "styled_generation", "style_transfer", "retrieval",
              "style_subject", "multi_subject", "control_subject", "control_style")  # index = task_id
CONTROL_TASKS = {"edge_to_image": "edge", "depth_to_image": "depth", "mask_to_image": "mask",
                 "sketch_to_image": "sketch"}
STAGE2_TASKS = TASK_NAMES[:8]
ZERO_SHOT_TASKS = TASK_NAMES[9:]
TRAINING_TASKS = TASK_NAMES[:9]
# Table 1 of the paper -> the world. source -> (task, weight); "artwork" = text-to-image with captions naming a style.
STAGE2_MIXTURE = {
    "text_to_image": 0.15, "artwork": 0.05,
    "depth_to_image": 0.06, "mask_to_image": 0.06, "edge_to_image": 0.06, "sketch_to_image": 0.02,
    "subject": 0.40, "styled_generation": 0.10, "style_transfer": 0.10,
}
SOURCE_TASK = {s: ("text_to_image" if s == "artwork" else s) for s in STAGE2_MIXTURE}
REF_TEXT = {"edge": "edge map", "depth": "depth map", "mask": "object mask", "sketch": "sketch"}
DROP_P = 0.10  # stage 1: P(drop text + context) and P(drop context only), App. A.3.1


class TaskError(WorldError):
    """A bad task name, split, mixture or a forbidden (zero-shot) training request; names the field and the fix."""


def task_id(task: str) -> int:
    check_task(task)
    return TASK_NAMES.index(task)


def check_task(task) -> str:
    if task not in TASK_NAMES:
        raise TaskError(f"task={task!r} is unknown; use one of {', '.join(TASK_NAMES)}")
    return task


# ------------------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Ref:
    """One context of a spec: its kind, the scene it shows, the style applied, and its short text (no marker)."""

    kind: str
    scene: W.Scene
    style: str | None = None
    text: str = ""


@dataclass(frozen=True)
class Spec:
    """Everything an example is, as data (no pixels): task, target scene + style, contexts, payload text, and the
    per-example seed used for the control augmentation. `drop`: None | "context" | "all" (stage-1 dropout)."""

    task: str
    scene: W.Scene
    style: str | None
    refs: tuple
    text: str
    caption: str | None
    seed: int
    drop: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Example:
    """A realised example: `instruction` (iimagen.instruction.Instruction), `target` uint8 RxRx3, `truth` dict, and
    the `spec` it was rendered from (the judges re-render its scene with other identities and styles)."""

    task: str
    instruction: object
    target: np.ndarray
    truth: dict
    drop: str | None = None
    spec: Spec | None = None

    @property
    def task_id(self) -> int:
        return TASK_NAMES.index(self.task)


def no_instruction_text(ex: Example) -> str | None:
    """The payload the multi-task baseline (paper §5.1, `--variant no_instruction`) sees instead of the instruction:
    the target caption, or None (no text at all) for style transfer. Contexts keep their images and short texts."""
    return ex.truth.get("caption")


def composition(spec: Spec) -> dict:
    """What a spec combines: subjects (target or references), style (target styled or style context), control."""
    subjects = set(spec.scene.subjects) | {s for r in spec.refs if r.kind == "subject" for s in r.scene.subjects}
    styled = spec.style is not None or any(r.kind == "style" for r in spec.refs)
    control = any(r.kind in REF_TEXT for r in spec.refs)
    return {"subjects": subjects, "style": styled, "control": control}


def is_zero_shot(spec: Spec) -> bool:
    """True for the compositions never trained on: style+subject, several subjects, control+subject,
    control+style."""
    c = composition(spec)
    return (c["style"] and bool(c["subjects"])) or len(c["subjects"]) > 1 or (c["control"] and bool(c["subjects"])) \
        or (c["control"] and c["style"])


def check_training(spec: Spec) -> Spec:
    """Raise TaskError if a training spec is a zero-shot composition or uses a held-out subject or style."""
    if is_zero_shot(spec):
        raise TaskError(f"spec for task {spec.task!r} is a zero-shot composition {composition(spec)}; "
                        f"zero-shot compositions are evaluation-only")
    scenes = [spec.scene] + [r.scene for r in spec.refs]
    held = {s.key for sc in scenes for s in sc.identities if s.held_out}
    for st in [spec.style] + [r.style for r in spec.refs]:
        if (st.held_out if isinstance(st, W.Style) else st in W.HELD_OUT_STYLES):
            held.add(W.style_key(st))
    if held:
        raise TaskError(f"training spec for {spec.task!r} uses held-out {sorted(held)}; they are for evaluation only")
    return spec


def _named_styles(split: str):
    """The named styles an "artwork" caption may name in `split`."""
    return W.TRAIN_STYLES if W.check_split(split) == "train" else W.HELD_OUT_STYLES


def _subject_scenes(rng, subject: W.Subject, n: int) -> list:
    """`n` reference scenes of one identity: new poses, places, sizes, company and backgrounds."""
    return [W.random_scene(rng, n_objects=1 + int(rng.integers(0, 2)), subjects=[subject]) for _ in range(n)]


def _marks(first: int, n: int) -> str:
    return " ".join(f"[ref#{k}]" for k in range(first, first + n))


def _plain_scene(rng, **kw):
    return W.random_scene(rng, **kw)


def draw_spec(task: str, rng: np.random.Generator, split: str = "train", training: bool = False,
              source: str | None = None, anonymous: bool | None = None) -> Spec:
    """A random spec of `task` (no pixels). `training=True` is what the training loaders use: it refuses zero-shot
    tasks and the 'test' split, and checks the result with `check_training`. `source="artwork"` gives text-to-image
    with an artwork caption (a styled target named by its style).

    `anonymous` (default: `training`): the text never names a reference's identity. Each subject gets a nonce name
    drawn for this example (`world.nonce_name`), in the reference text and the caption alike, and a style reference
    is called "style image", never by its style's name. A world name fixes the look, so a model trained on named
    references learns the look from the name and never reads the reference (measured: no gain from the true
    reference on subjects, even for training subjects). Nonce names keep the paper's setting, where "[ref#1] a dog"
    says the class and only the images say which dog. Text-to-image "artwork" captions still name their style:
    there the text is the only carrier. `ref.text` keeps the shown name; the truth keeps the real subject."""
    from . import templates as T

    check_task(task)
    if training and task in ZERO_SHOT_TASKS:
        raise TaskError(f"task {task!r} is a zero-shot composition and never trained on; training tasks are "
                        f"{', '.join(TRAINING_TASKS)}")
    if training and split != "train":
        raise TaskError(f"training draws use split='train', got {split!r}")
    if task == "retrieval":
        raise TaskError("task 'retrieval' is drawn from a RetrievalPool (stage 1): use RetrievalPool(...).spec(i, rng)")
    styles = _named_styles(split)
    anonymous = training if anonymous is None else bool(anonymous)
    seed = int(rng.integers(2 ** 31))
    style, refs, cap, meta = None, (), None, {}
    if task == "text_to_image":
        scene = _plain_scene(rng)
        if source == "artwork" or (source is None and rng.random() < 0.25):
            style = W.pick(rng, styles)
            meta["artwork"] = True
        cap = W.caption(scene, rng, style=style)
        text = T.render(task, rng, caption=cap)
    elif task in CONTROL_TASKS:
        kind = CONTROL_TASKS[task]
        scene = _plain_scene(rng)
        refs = (Ref(kind, scene, None, REF_TEXT[kind]),)
        cap = W.caption(scene, rng)
        text = T.render(task, rng, caption=cap, refs=[f"[ref#1] {REF_TEXT[kind]}"])
    elif task in ("subject", "style_subject", "multi_subject", "control_subject"):
        idents = [W.draw_subject(rng, split) for _ in range(2 if task == "multi_subject" else 1)]
        scene = W.random_scene(rng, n_objects=len(idents) + int(rng.integers(0, 2)) if len(idents) > 1 else None,
                               subjects=idents)
        shown = {}  # subject key -> the name the text calls it
        for s in idents:
            shown[s.key] = W.nonce_name(rng, avoid=shown.values()) if anonymous else W.subject_name(s)
        said = [shown[s.key] for s in idents]
        cap = W.caption(scene, rng, names=shown)
        if task == "subject":
            n = int(rng.integers(1, 4))
            refs = tuple(Ref("subject", sc, None, said[0]) for sc in _subject_scenes(rng, idents[0], n))
            text = T.render(task, rng, caption=cap, refs=[f"{_marks(1, n)} {said[0]}"])
        elif task == "multi_subject":
            refs = tuple(Ref("subject", _subject_scenes(rng, s, 1)[0], None, shown[s.key]) for s in idents)
            text = T.render(task, rng, caption=cap, refs=[f"[ref#1] {said[0]}", f"[ref#2] {said[1]}"])
        elif task == "style_subject":
            style = W.draw_style(rng, split)
            refs = (Ref("subject", _subject_scenes(rng, idents[0], 1)[0], None, said[0]),
                    Ref("style", _plain_scene(rng), style, "style image"))
            text = T.render(task, rng, caption=cap, refs=[f"[ref#1] {said[0]}", "[ref#2] style image"])
        else:
            kind = W.pick(rng, list(REF_TEXT))
            refs = (Ref("subject", _subject_scenes(rng, idents[0], 1)[0], None, said[0]),
                    Ref(kind, scene, None, REF_TEXT[kind]))
            text = T.render(task, rng, caption=cap, refs=[f"[ref#1] {said[0]}", f"[ref#2] {REF_TEXT[kind]}"],
                            control=kind)
    elif task == "styled_generation":  # a procedural style has no name: only its reference carries it
        scene, style, word = _plain_scene(rng), W.draw_style(rng, split), "style image"
        refs = (Ref("style", _plain_scene(rng), style, word),)
        cap = W.caption(scene, rng)
        text = T.render(task, rng, caption=cap, refs=[f"[ref#1] {word}"])
    elif task == "style_transfer":
        scene, style, word = _plain_scene(rng), W.draw_style(rng, split), "style image"
        refs = (Ref("style", _plain_scene(rng), style, word), Ref("content", scene, None, "content image"))
        text = T.render(task, rng, refs=[f"[ref#1] {word}", "[ref#2] content image"])
    else:  # control_style
        kind = W.pick(rng, list(REF_TEXT))
        scene, style = _plain_scene(rng), W.draw_style(rng, split)
        refs = (Ref(kind, scene, None, REF_TEXT[kind]), Ref("style", _plain_scene(rng), style, "style image"))
        cap = W.caption(scene, rng)
        text = T.render(task, rng, caption=cap, refs=[f"[ref#1] {REF_TEXT[kind]}", "[ref#2] style image"],
                        control=kind)
    spec = Spec(task, scene, style, refs, text, cap, seed, None, meta)
    return check_training(spec) if training else spec


# ----------------------------------------------------------------------------------------------------- pixels
class _Renders:
    """Per-spec render cache: the target scene is rendered once even when a control context reuses it."""

    def __init__(self, resolution):
        self.R, self.cache = resolution, {}

    def __call__(self, scene):
        key = id(scene)
        if key not in self.cache:
            self.cache[key] = (scene, W.render(scene, self.R))
        return self.cache[key][1]


def realize(spec: Spec, resolution: int, images: dict | None = None, with_truth: bool = True) -> Example:
    """Render a spec at `resolution` into an Example (Instruction + target + truth). `images` may map id(scene) ->
    uint8 image for scenes already rendered (the retrieval pool's cache). `with_truth=False` (the training loader)
    skips the per-object ground truth: `truth` then holds only task, caption, style and drop."""
    from .instruction import Context, Instruction

    R = W.check_resolution(resolution)
    rend = _Renders(R)
    rng = np.random.default_rng(spec.seed)
    images = images or {}

    def pixels(scene, style):
        if style is None and id(scene) in images:
            return images[id(scene)]
        return W.to_uint8(W.stylize(rend(scene).image, style))

    target = pixels(spec.scene, spec.style)
    ctxs = []
    for r in spec.refs:
        if r.kind in REF_TEXT:
            img = W.control(rend(r.scene), r.kind, rng)
        else:
            img = pixels(r.scene, r.style)
        ctxs.append(Context(img, r.text, r.kind))
    if spec.drop is not None:
        ctxs = []
    instruction = Instruction(spec.text, tuple(ctxs))
    if not with_truth:
        return Example(spec.task, instruction, target, {"task": spec.task, "caption": spec.caption,
                                                        "style": W.style_key(spec.style), "drop": spec.drop},
                       spec.drop, spec)
    truth = W.truth(rend(spec.scene), spec.style, spec.caption)
    idents = {s.key: s.params() for sc in [spec.scene] + [r.scene for r in spec.refs] for s in sc.identities}
    styles = {st.key: st.params() for st in [spec.style] + [r.style for r in spec.refs] if isinstance(st, W.Style)}
    truth.update(task=spec.task, refs=[{"kind": r.kind, "text": r.text, "style": W.style_key(r.style),
                                        "subjects": r.scene.subjects} for r in spec.refs], drop=spec.drop,
                 identities=idents, styles=styles, **spec.meta)
    return Example(spec.task, instruction, target, truth, spec.drop, spec)


def sample(task: str, n: int, seed: int, resolution: int, split: str = "train", pool=None,
           anonymous: bool = False) -> list[Example]:
    """`n` examples of `task` at `resolution` (32/64/128), deterministic in `seed`. Zero-shot tasks are allowed here
    (evaluation); `split='test'` uses the held-out subjects and styles. `task='retrieval'` draws stage-1 examples
    from `pool` (a RetrievalPool; a small default one is built when None). `anonymous=True` names subjects and
    styles as training does (nonce names; see `draw_spec`)."""
    check_task(task)
    W.check_resolution(resolution)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise TaskError(f"n={n!r} must be an int >= 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TaskError(f"seed={seed!r} must be an int >= 0")
    W.check_split(split)
    if task == "retrieval":
        rng = np.random.default_rng([int(seed), task_id(task)])
        pool = pool or RetrievalPool(512, seed=int(seed))
        return [pool.example(int(rng.integers(len(pool.clusters))), rng, resolution, anonymous=anonymous)
                for _ in range(n)]
    return [realize(spec, resolution) for spec in sample_specs(task, n, seed, split, anonymous)]


def sample_specs(task: str, n: int, seed: int, split: str = "train", anonymous: bool = False) -> list[Spec]:
    """The specs (scenes as data) behind `sample(task, n, seed, ...)`: the same examples, before rendering."""
    rng = np.random.default_rng([int(seed), task_id(task)])
    return [draw_spec(task, rng, split, anonymous=anonymous) for _ in range(n)]


# ------------------------------------------------------------------------------------------ stage-2 mixture
def check_mixture(mixture: dict | None) -> dict:
    """Normalised {source: weight}; sources are STAGE2_MIXTURE's keys (or any training task name)."""
    mixture = dict(STAGE2_MIXTURE if mixture is None else mixture)
    valid = set(STAGE2_MIXTURE) | set(STAGE2_TASKS)
    bad = [k for k in mixture if k not in valid or k in ZERO_SHOT_TASKS]
    if bad or not mixture:
        raise TaskError(f"mixture sources {bad or '(empty)'} are not valid; use some of {', '.join(sorted(valid))}")
    w = np.asarray(list(mixture.values()), float)
    if np.any(w < 0) or w.sum() <= 0:
        raise TaskError(f"mixture weights {mixture} must be >= 0 with a positive sum")
    return dict(zip(mixture, (w / w.sum()).tolist()))


def draw_mixture_spec(rng: np.random.Generator, mixture: dict | None = None, anonymous: bool | None = None) -> Spec:
    """One training spec of the stage-2 mixture (what `data.Loader` trains on): a source by its weight, then its
    task's spec (`anonymous` as in `draw_spec`)."""
    m = check_mixture(mixture)
    src = W.pick(rng, list(m), p=list(m.values()))
    return draw_spec(SOURCE_TASK.get(src, src), rng, training=True, source="artwork" if src == "artwork" else "natural",
                     anonymous=anonymous)


# ------------------------------------------------------------------------------------------ stage-1 clusters
SUBJECT_SLOT = "\x00"  # where a pool caption names its subject (RetrievalPool.caption fills it)


class RetrievalPool:
    """Stage-1 data (App. A.3.1): a pool of captioned world images (plain scenes, styled scenes with artwork
    captions, and groups of 3-6 scenes of one fresh identity each; training regions only), embedded with `retrieval.embed`, and
    clusters of 5 similar-but-not-duplicate items: for each anchor, its top-10 neighbours by cosine similarity,
    near-duplicates removed (`dup_threshold`), truncated to 5; shorter clusters are dropped."""

    def __init__(self, size: int = 2048, seed: int = 0, embed_resolution: int = 32, dup_threshold: float = 0.97,
                 cluster_size: int = 5, candidates: int = 10):
        from . import retrieval

        rng = np.random.default_rng([seed, 101])
        self.items = []  # (scene, style, caption with the subject's own name)
        self._templates = []  # the same captions with SUBJECT_SLOT where the subject's name goes
        while len(self.items) < size:
            u = rng.random()
            if u < 0.35:  # a fresh identity, shown in several scenes (world v2: no identity recurs elsewhere)
                ident = W.draw_subject(rng, "train")
                group = [(sc, None) for sc in _subject_scenes(rng, ident, int(rng.integers(3, 7)))]
            else:
                group = [(W.random_scene(rng), (W.pick(rng, W.TRAIN_STYLES) if u < 0.7 else None))]
            for sc, st in group[:size - len(self.items)]:
                template = W.caption(sc, rng, style=st, names={s: SUBJECT_SLOT for s in sc.subjects})
                self._templates.append(template)
                self.items.append((sc, st, template.replace(SUBJECT_SLOT, W.subject_name(sc.identities[0]))
                                   if sc.subjects else template))
        self.subject = np.asarray([it[0].subjects[0] if it[0].subjects else "" for it in self.items])
        self.style = np.asarray([it[1] or "" for it in self.items])
        imgs = np.stack([self.image(i, embed_resolution) for i in range(size)])
        self.emb = retrieval.embed(imgs)
        self.clusters = retrieval.build_clusters(self.emb, cluster_size, candidates, dup_threshold)
        self._cache: dict = {}

    def __len__(self):
        return len(self.items)

    def image(self, i: int, resolution: int) -> np.ndarray:
        """uint8 image of item i (cached per resolution)."""
        key = (i, resolution)
        cache = getattr(self, "_cache", {})
        if key not in cache:
            sc, st, _ = self.items[i]
            cache[key] = W.to_uint8(W.stylize(W.render(sc, resolution).image, st))
            self._cache = cache
        return cache[key]

    def caption(self, i: int, names: dict | None = None) -> str:
        """Item i's caption, its subject called `names[key]` (default: `world.subject_name`)."""
        sc, _, cap = self.items[i]
        if not sc.subjects or not names or sc.subjects[0] not in names:
            return cap
        return self._templates[i].replace(SUBJECT_SLOT, names[sc.subjects[0]])

    def spec(self, c: int, rng: np.random.Generator, anonymous: bool = False) -> tuple[Spec, list[int]]:
        """Stage-1 spec from cluster c: 1 target + 3 neighbours (raw captions), with the 10 %/10 % dropout.

        `anonymous` (what training uses): every subject in the example gets one nonce name, the same in the target's
        caption and in each neighbour's that shows it, as stage 2 does (`draw_spec`). With the subjects' own names
        the caption alone fixes the look, and the neighbours never need reading for it."""
        members = [int(i) for i in rng.permutation(self.clusters[c])]
        t, ctx = members[0], members[1:4]
        u = rng.random()
        drop = "all" if u < DROP_P else ("context" if u < 2 * DROP_P else None)
        seed = int(rng.integers(2 ** 31))
        names: dict = {}
        if anonymous:
            for i in [t] + ctx:
                for s in self.items[i][0].subjects:
                    if s not in names:
                        names[s] = W.nonce_name(rng, avoid=names.values())
        sc, st, _ = self.items[t]
        cap = self.caption(t, names)
        refs = tuple(Ref("reference", self.items[i][0], self.items[i][1], self.caption(i, names)) for i in ctx)
        spec = Spec("retrieval", sc, st, refs, cap, cap, seed, drop, {"pool_items": [t] + ctx})
        return spec, [t] + ctx

    def example(self, c: int, rng: np.random.Generator, resolution: int, with_truth: bool = True,
                anonymous: bool = False) -> Example:
        spec, idx = self.spec(c, rng, anonymous)
        images = {id(self.items[i][0]): self.image(i, resolution) for i in idx}
        # the pool's images carry their own style: realize() must not restyle them
        spec = Spec(spec.task, spec.scene, None, tuple(Ref(r.kind, r.scene, None, r.text) for r in spec.refs),
                    spec.text, spec.caption, spec.seed, spec.drop, spec.meta)
        ex = realize(spec, resolution, images, with_truth)
        ex.truth["style"] = self.items[idx[0]][1]
        if not with_truth:
            return ex
        ex.truth["refs"] = [dict(r, style=self.items[i][1]) for r, i in zip(ex.truth["refs"], idx[1:])]
        return ex


# ------------------------------------------------------------------------------------------ curated examples
EXAMPLE_SEEDS = {t: 1000 + i for i, t in enumerate(TASK_NAMES)}


def write_examples(folder=None, resolution: int = 64, overwrite: bool = False) -> Path:
    """Regenerate `data/examples/`: one Instruction folder per task and zero-shot composition (fixed seeds, 64 px),
    with `target.png`, `truth.json`, and `index.json` listing them. Existing example folders are replaced only with
    `overwrite=True` (`Instruction.save`'s rule)."""
    from PIL import Image

    from . import paths

    folder = Path(folder or paths.EXAMPLES)
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    pool = None
    for task in TASK_NAMES:
        if task == "retrieval":
            pool = RetrievalPool(256, seed=EXAMPLE_SEEDS[task])
        ex = sample(task, 1, EXAMPLE_SEEDS[task], resolution, pool=pool)[0]
        if task == "retrieval" and ex.drop:  # show the undropped case
            ex = next(e for e in sample(task, 8, EXAMPLE_SEEDS[task], resolution, pool=pool) if not e.drop)
        ex.instruction.save(folder / task, overwrite=overwrite)
        Image.fromarray(ex.target).save(folder / task / "target.png")
        (folder / task / "truth.json").write_text(json.dumps(ex.truth, indent=1) + "\n")
        index.append({"task": task, "folder": task, "zero_shot": task in ZERO_SHOT_TASKS,
                      "seed": EXAMPLE_SEEDS[task], "resolution": resolution, "text": ex.instruction.text})
    (folder / "index.json").write_text(json.dumps({"examples": index}, indent=1) + "\n")
    return folder
