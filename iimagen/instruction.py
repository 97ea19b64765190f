"""The multi-modal instruction (paper §2, App. A.3.2): a payload text plus up to 8 (marker + text, image) contexts.

An instruction has two parts [P §2]:

1. the **payload text**, natural language that states the task and points at context items with reference markers
   `[ref#1]`, `[ref#2]`, ... ("Create an image using [ref#1] depth map as a reference and following ...");
2. the **multi-modal context**, a list of `Context(image, text, kind)`. Context k's text starts with its own marker,
   "[ref#1] edge map", "[ref#2] style image", so the payload and the context share marker identity (the markers are
   single special tokens of the tokenizer, App. A.3.2).

    >>> ins = Instruction("Let [ref#1] edge map guide you: a red circle", [Context(edge, "edge map", kind="edge")])
    >>> ins.contexts[0].text
    '[ref#1] edge map'

Everything is checked at construction; bad input raises `InstructionError` (a `ValueError`) naming the field and the
fix. `batch_instructions` turns a list of instructions into the arrays of docs/contracts.md (fixed K slots + mask).
"""
from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_CONTEXTS = 8
MIN_SIDE = 8
KINDS = ["reference", "subject", "style", "content", "edge", "depth", "mask", "sketch"]

_MARKER = re.compile(r"\[ref#([1-9][0-9]*)\]")  # a well-formed marker: [ref#N], N >= 1, no leading zero
_CANDIDATE = re.compile(r"\[\s*ref(?![a-z])", re.IGNORECASE)  # anything that looks like the start of a marker


class InstructionError(ValueError):
    """A malformed instruction, context, image or instruction file; the message names the field and the fix."""


def register_kind(name: str) -> str:
    """Add a context kind (e.g. "pose") to the registry `KINDS`; registering an existing kind does nothing."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise InstructionError(f"register_kind: kind {name!r} must be a lower-case identifier such as 'pose'")
    if name not in KINDS:
        KINDS.append(name)
    return name


def marker(k: int) -> str:
    """The reference marker of context slot k (1-based): marker(2) == '[ref#2]'."""
    return f"[ref#{k}]"


def find_markers(text: str, field: str = "text") -> list[tuple[int, int, int]]:
    """(start, end, N) of every marker in `text`; a malformed one ([ref#0], [ref#x], [ref# 1], [ref#01]) is an error."""
    found = []
    for m in _CANDIDATE.finditer(text):
        ok = _MARKER.match(text, m.start())
        if not ok:
            bad = text[m.start(): text.find("]", m.start()) + 1 or m.start() + 8]
            raise InstructionError(
                f"{field}: malformed reference marker {bad!r} at position {m.start()}; "
                f"write markers exactly as [ref#1], [ref#2], ... (lower case, no spaces, numbers from 1)")
        found.append((ok.start(), ok.end(), int(ok.group(1))))
    return found


# ----------------------------------------------------------------------------------------------------------- images
def to_rgb_uint8(image, field: str = "image") -> np.ndarray:
    """Any accepted image as a fresh uint8 HxWx3 array.

    Accepted: a numpy (or jax) array HxW, HxWx1, HxWx3 or HxWx4, uint8, uint16 or float in [0, 1]; a PIL image; a path
    to an image file. Grey becomes RGB; RGBA is composited on white.

    16-bit images (uint16 arrays, PIL modes I;16 and I, 16-bit PNG/TIFF files: the usual format of depth maps) are
    scaled by the type's maximum, 65535 -> 255, as 8-bit images are by 255 (a PIL mode-I image must lie in 0..65535).
    Float images (PIL mode F, float TIFF) must lie in [0, 1], as float arrays do. Other integer arrays (int64...) are
    refused: their range is unknown. Nothing is clipped: normalise a depth map in metres or millimetres first, e.g.
    d / d.max().
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InstructionError(f"{field}: no image file at {str(path)!r}; check the path")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise InstructionError(f"{field}: {str(path)!r} is not a readable image file (PNG, JPEG...): {e}") from None
    if isinstance(image, Image.Image):
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # 16/32-bit and float grey: read the values
            image = np.asarray(image)
            if image.dtype.kind in "ui":  # I;16 (16-bit PNG/TIFF) or I (how some Pillow versions open them)
                lo, hi = int(image.min()), int(image.max())
                if lo < 0 or hi > 65535:
                    raise InstructionError(
                        f"{field}: 32-bit integer image has values in [{lo}, {hi}]; it is read as 16-bit (0..65535): "
                        f"scale it first, e.g. np.asarray(im) / np.asarray(im).max() for a float image in [0, 1]")
                image = image.astype(np.uint16)
        elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = np.asarray(image.convert("RGBA"))
        else:
            image = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray) or hasattr(image, "__array__") and not isinstance(image, (list, tuple)):
        image = np.asarray(image)
    else:
        raise InstructionError(
            f"{field}: got a {type(image).__name__}; give a numpy array (HxW, HxWx1, HxWx3, HxWx4), a PIL image "
            f"or a path to an image file")

    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise InstructionError(
            f"{field}: array of shape {image.shape} is not an image; use HxW, HxWx1, HxWx3 or HxWx4 (channels last)")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InstructionError(f"{field}: image is {h}x{w}; each side must be at least {MIN_SIDE} px")
    if image.dtype == np.uint16:  # 16-bit full scale, as uint8 / 255
        image = image.astype(np.float32) / 65535.0
    if image.dtype == np.uint8:
        x = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        x = image.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise InstructionError(f"{field}: float image has NaN or inf values; replace them (np.nan_to_num)")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InstructionError(
                f"{field}: float image has values in [{lo:.3g}, {hi:.3g}]; floats must lie in [0, 1] "
                f"(divide uint8-range data by 255, or map [-1, 1] data with (x + 1) / 2)")
    else:
        raise InstructionError(
            f"{field}: dtype {image.dtype} is not supported; use uint8 (0..255) or float in [0, 1] "
            f"(e.g. image.astype(np.uint8) or image / 255.0)")
    c = x.shape[-1]
    if image.dtype == np.uint8 and c != 4:  # exact: no float round trip
        out = np.repeat(image, 3, axis=-1) if c == 1 else image.copy()
    else:
        if c == 1:
            x = np.repeat(x, 3, axis=-1)
        elif c == 4:  # composite on white
            a = x[..., 3:]
            x = x[..., :3] * a + (1.0 - a)
        out = np.round(x * 255.0).astype(np.uint8)
    out = np.ascontiguousarray(out)
    out.flags.writeable = False
    return out


# ------------------------------------------------------------------------------------------------------ the parts
@dataclass(frozen=True, eq=False)
class Context:
    """One context item: an image, its short text ("edge map", "[ref#1] a dog") and its kind.

    `image` is stored as uint8 HxWx3 (read-only). The text may start with its own marker; an `Instruction` places the
    context in slot k and prefixes `[ref#k] ` when the text has none.
    """

    image: np.ndarray
    text: str = ""
    kind: str = "reference"

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise InstructionError(f"Context.text must be a string, got {type(self.text).__name__}")
        if self.kind not in KINDS:
            raise InstructionError(
                f"Context.kind {self.kind!r} is unknown; use one of {', '.join(KINDS)} "
                f"(or register_kind({self.kind!r}))")
        marks = find_markers(self.text, "Context.text")
        if marks and (len(marks) > 1 or marks[0][0] != 0):
            raise InstructionError(
                f"Context.text {self.text!r}: a context text may hold only its own marker, at the start "
                f"('[ref#1] edge map'); remove the other markers")
        object.__setattr__(self, "image", to_rgb_uint8(self.image, "Context.image"))

    @property
    def slot(self) -> int | None:
        """The marker number the text starts with, or None."""
        m = _MARKER.match(self.text)
        return int(m.group(1)) if m else None

    def __eq__(self, other):
        return (isinstance(other, Context) and self.text == other.text and self.kind == other.kind
                and self.image.shape == other.image.shape and np.array_equal(self.image, other.image))

    __hash__ = None


@dataclass(frozen=True, eq=False)
class Instruction:
    """A multi-modal instruction (paper §2): payload `text` with `[ref#k]` markers, and `contexts` (slot k = index k-1).

    Rules: the text is a non-empty string; markers are exactly `[ref#N]`, N >= 1, and each refers to an existing
    context; at most `MAX_CONTEXTS` contexts; context k's text starts with `[ref#k]` (added when missing). A context
    the text never mentions is allowed (stage-1 neighbours are such).
    """

    text: str
    contexts: tuple = ()

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise InstructionError(
                f"Instruction.text must be a non-empty string, got {self.text!r}; state the task, e.g. "
                f"'Generate an image of [ref#1] a dog, following the caption: a dog on a beach'")
        ctxs = self.contexts
        if isinstance(ctxs, Context):
            ctxs = (ctxs,)
        if not isinstance(ctxs, (list, tuple)):
            raise InstructionError(f"Instruction.contexts must be a list of Context, got {type(ctxs).__name__}")
        if len(ctxs) > MAX_CONTEXTS:
            raise InstructionError(
                f"Instruction.contexts has {len(ctxs)} items; at most MAX_CONTEXTS={MAX_CONTEXTS} are allowed")
        placed = []
        for k, c in enumerate(ctxs, start=1):
            if not isinstance(c, Context):
                raise InstructionError(
                    f"Instruction.contexts[{k - 1}] is a {type(c).__name__}; wrap it as Context(image, text, kind)")
            if c.slot is None:
                c = Context(c.image, (marker(k) + " " + c.text).strip(), c.kind)
            elif c.slot != k:
                raise InstructionError(
                    f"Instruction.contexts[{k - 1}] (context {k}) has text {c.text!r} starting with {marker(c.slot)}; "
                    f"context {k} must start with {marker(k)} or have no marker")
            placed.append(c)
        for _, _, n in find_markers(self.text, "Instruction.text"):
            if n > len(placed):
                raise InstructionError(
                    f"Instruction.text refers to {marker(n)} but there {'is' if len(placed) == 1 else 'are'} only "
                    f"{len(placed)} context{'' if len(placed) == 1 else 's'}; "
                    f"add context {n} or fix the marker")
        object.__setattr__(self, "contexts", tuple(placed))

    # -------------------------------------------------------------------------------------------- properties
    @property
    def markers(self) -> list[int]:
        """Sorted marker numbers used in the payload text."""
        return sorted({n for _, _, n in find_markers(self.text)})

    @property
    def kinds(self) -> list[str]:
        return [c.kind for c in self.contexts]

    def __len__(self):
        return len(self.contexts)

    def __eq__(self, other):
        return isinstance(other, Instruction) and self.text == other.text and self.contexts == other.contexts

    __hash__ = None

    def __repr__(self):
        ctx = ", ".join(f"{c.text!r} ({c.kind}, {c.image.shape[0]}x{c.image.shape[1]})" for c in self.contexts)
        return f"Instruction({self.text!r}, contexts=[{ctx}])"

    # -------------------------------------------------------------------------------------------- dict / JSON
    def to_dict(self) -> dict:
        """{'text', 'contexts': [{'text', 'kind', 'image' (uint8 array)}]}; `from_dict` inverts it."""
        return {"text": self.text,
                "contexts": [{"text": c.text, "kind": c.kind, "image": c.image} for c in self.contexts]}

    @classmethod
    def from_dict(cls, d: dict, root: Path | None = None) -> "Instruction":
        """Build from `to_dict()` output, or from the JSON of `save` (image file names resolved against `root`)."""
        if not isinstance(d, dict):
            raise InstructionError(f"instruction data must be a dict/JSON object, got {type(d).__name__}")
        for key, typ in (("text", str), ("contexts", list)):
            if key not in d:
                raise InstructionError(f"instruction data has no {key!r} key; add it (see Instruction.save)")
            if not isinstance(d[key], typ):
                raise InstructionError(
                    f"instruction data {key!r} must be a {typ.__name__}, got {type(d[key]).__name__}")
        ctxs = []
        for i, c in enumerate(d["contexts"]):
            where = f"contexts[{i}]"
            if not isinstance(c, dict):
                raise InstructionError(f"{where} must be an object with 'image', 'text' and 'kind'")
            if "image" not in c:
                raise InstructionError(f"{where} has no 'image'; give the PNG file name or an array")
            for key in ("text", "kind"):
                if key in c and not isinstance(c[key], str):
                    raise InstructionError(f"{where}.{key} must be a string, got {type(c[key]).__name__}")
            image = c["image"]
            if isinstance(image, str):
                image = Path(root or ".") / image
                if not image.is_file():
                    raise InstructionError(f"{where}.image: file {str(image)!r} is missing; restore it or fix the name")
            try:
                ctxs.append(Context(image, c.get("text", ""), c.get("kind", "reference")))
            except InstructionError as e:
                raise InstructionError(f"{where}: {e}") from None
        return cls(d["text"], tuple(ctxs))

    def save(self, folder, overwrite: bool = False) -> Path:
        """Write `folder/instruction.json` and `folder/context_k.png` per context; returns the JSON path.

        A new or empty folder is written directly. A folder that already holds an instruction is replaced only with
        `overwrite=True`: every file is written under a temporary name and renamed, instruction.json last, and the
        context_k.png files of the old instruction that the new one lacks are removed (other files are kept). Any
        other non-empty folder is refused: nothing of the user's is overwritten."""
        from .paths import atomic_write

        folder = Path(folder)
        if folder.is_file():
            raise InstructionError(f"Instruction.save: {str(folder)!r} is a file; give a folder")
        if folder.is_dir() and any(folder.iterdir()):
            if not (folder / "instruction.json").is_file():
                raise InstructionError(f"Instruction.save: {str(folder)!r} holds other files; give a new or empty "
                                       "folder (nothing was written)")
            if not overwrite:
                raise InstructionError(f"Instruction.save: {str(folder)!r} already holds an instruction; pass "
                                       "overwrite=True to replace it, or give a new folder")
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": "iimagen.instruction/1", "text": self.text, "contexts": []}
        for k, c in enumerate(self.contexts, start=1):
            name = f"context_{k}.png"
            atomic_write(folder / name, lambda p, im=c.image: Image.fromarray(im).save(p, format="PNG"))
            meta["contexts"].append({"text": c.text, "kind": c.kind, "image": name})
        for stale in folder.glob("context_*.png"):
            if re.fullmatch(r"context_[0-9]+\.png", stale.name) and int(stale.stem[8:]) > len(self.contexts):
                stale.unlink()
        text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
        return atomic_write(folder / "instruction.json", lambda p: p.write_text(text))

    @classmethod
    def load(cls, path) -> "Instruction":
        """Read what `save` wrote: the folder or its `instruction.json`."""
        path = Path(path)
        if path.is_dir():
            path = path / "instruction.json"
        if not path.is_file():
            raise InstructionError(f"Instruction.load: no instruction file at {str(path)!r}; give a folder written "
                                   f"by Instruction.save or its instruction.json")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InstructionError(
                f"Instruction.load: {str(path)!r} is not valid JSON ({e}); fix or re-save it") from None
        try:
            return cls.from_dict(d, root=path.parent)
        except InstructionError as e:
            raise InstructionError(f"Instruction.load({str(path)!r}): {e}") from None

    # -------------------------------------------------------------------------------------------- drawing
    def draw(self, width: float | None = None, wrap: int | None = None):
        """A matplotlib Figure laid out like the paper's Fig. 2: the payload text with markers in colour, and each
        context image below with its marker and text in the same colour.

        The figure is closed in pyplot before it is returned (no duplicate display, no leak in loops): a notebook
        shows it when it is a cell's value; elsewhere call `fig.savefig(...)`."""
        import matplotlib.pyplot as plt
        from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker

        n = len(self.contexts)
        width = width or max(7.0, 2.4 * n)
        lines = textwrap.wrap(self.text, wrap or int(10 * width)) or [""]
        text_h = 0.35 + 0.28 * len(lines)
        fig = plt.figure(figsize=(width, text_h + (2.9 if n else 0.0)))
        plt.close(fig)
        gs = fig.add_gridspec(2 if n else 1, max(n, 1), height_ratios=[text_h, 2.9] if n else [1])
        ax = fig.add_subplot(gs[0, :])
        ax.axis("off")
        rows = []
        for line in lines:
            parts, pos = [], 0
            for s, e, k in find_markers(line):
                if s > pos:
                    parts.append(TextArea(line[pos:s], textprops=dict(size=11)))
                parts.append(TextArea(line[s:e], textprops=dict(size=11, weight="bold", color=_colour(k))))
                pos = e
            if pos < len(line):
                parts.append(TextArea(line[pos:], textprops=dict(size=11)))
            rows.append(HPacker(children=parts, pad=0, sep=0))
        box = VPacker(children=rows, pad=0, sep=4, align="left")
        ax.add_artist(AnchoredOffsetbox(loc="center left", child=box, frameon=False, bbox_to_anchor=(0, 0.5),
                                        bbox_transform=ax.transAxes, borderpad=0))
        for k, c in enumerate(self.contexts, start=1):
            a = fig.add_subplot(gs[1, k - 1])
            a.imshow(c.image, interpolation="nearest")
            a.set_xticks([]), a.set_yticks([])
            for sp in a.spines.values():
                sp.set_color(_colour(k)), sp.set_linewidth(3)
            a.set_title("\n".join(textwrap.wrap(c.text, 24)), color=_colour(k), fontsize=10)
            a.set_xlabel(c.kind, fontsize=9, color="0.4")
        fig.tight_layout()
        return fig


def _colour(k: int):
    import matplotlib

    return matplotlib.colormaps["tab10"]((k - 1) % 10)


# ---------------------------------------------------------------------------------------------------- batching
def resize_image(img: np.ndarray, r: int) -> np.ndarray:
    """uint8 HxWx3 -> float32 rxrx3 in [-1, 1]: bicubic when enlarging, area (box) when shrinking; no crop."""
    h, w = img.shape[:2]
    if (h, w) != (r, r):
        method = Image.Resampling.BOX if r < min(h, w) else Image.Resampling.BICUBIC
        img = np.asarray(Image.fromarray(img).resize((r, r), method))
    return img.astype(np.float32) / 127.5 - 1.0


def check_fits(instructions: Sequence[Instruction], tokenizer, text_len: int, ctx_text_len: int):
    """Raise InstructionError when an instruction's text has more than `text_len` tokens, or a context text more
    than `ctx_text_len`: the model would read it cut, and a lost `[ref#k]` changes the task."""
    for b, ins in enumerate(instructions):
        where = f"instruction {b}" if len(instructions) > 1 else "the instruction"
        n = len(tokenizer.tokens(ins.text))
        if n > text_len:
            raise InstructionError(
                f"{where}: Instruction.text has {n} tokens but the model reads {text_len} (ModelConfig.text_len); "
                f"shorten it by {n - text_len} tokens (markers are one token each), nothing is cut silently")
        for k, c in enumerate(ins.contexts, start=1):
            n = len(tokenizer.tokens(c.text))
            if n > ctx_text_len:
                raise InstructionError(
                    f"{where}: context {k}'s text {c.text!r} has {n} tokens but the model reads {ctx_text_len} "
                    f"(ModelConfig.ctx_text_len); shorten it by {n - ctx_text_len} tokens")


def batch_instructions(instructions: Sequence[Instruction], tokenizer, resolution: int, K: int,
                       text_len: int = 64, ctx_text_len: int = 32, *, texts: Sequence[str | None] | None = None,
                       uint8: bool = False, encode=None, check: bool = True) -> dict[str, np.ndarray]:
    """The instruction part of a model batch (docs/contracts.md): `text_ids [B, text_len]`, `ctx_image [B, K, R, R, 3]`
    (float32 in [-1, 1], zeros in empty slots), `ctx_ids [B, K, ctx_text_len]`, `ctx_mask [B, K]`. The one batcher:
    generation, evaluation and the training loader all use it.

    `tokenizer` is `iimagen.tokenizer.load_tokenizer()`. Images are resized (not cropped) to `resolution`. A text
    longer than `text_len` / `ctx_text_len` tokens is an error (`check_fits`), never cut.
    For training (`data.Loader`): `texts` replaces the instruction texts (None entries: all pad, the dropped text),
    `uint8=True` keeps the context images uint8 (what worker processes send; `(x + 1) * 127.5` of the float ones),
    `encode(texts, length)` replaces `tokenizer.encode` (the loader's memo), `check=False` skips `check_fits`.
    """
    if isinstance(instructions, Instruction):
        instructions = [instructions]
    if not isinstance(instructions, (list, tuple)) or not instructions:
        raise InstructionError("batch_instructions: give a non-empty list of Instruction")
    for name, v, lo in (("resolution", resolution, MIN_SIDE), ("K", K, 0), ("text_len", text_len, 1),
                        ("ctx_text_len", ctx_text_len, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise InstructionError(f"batch_instructions: {name}={v!r} must be an int >= {lo}")
    for b, ins in enumerate(instructions):
        if not isinstance(ins, Instruction):
            raise InstructionError(f"batch_instructions: item {b} is a {type(ins).__name__}, not an Instruction")
    if check:
        check_fits(instructions, tokenizer, text_len, ctx_text_len)
    encode = encode or tokenizer.encode
    B, R = len(instructions), resolution
    ctx_image = np.zeros((B, K, R, R, 3), np.uint8 if uint8 else np.float32)
    ctx_ids = np.zeros((B, K, ctx_text_len), np.int32)
    ctx_mask = np.zeros((B, K), bool)
    where, ctx_texts = [], []
    for b, ins in enumerate(instructions):
        if len(ins.contexts) > K:
            raise InstructionError(
                f"batch_instructions: instruction {b} has {len(ins.contexts)} contexts but the model has K={K} slots; "
                f"use a model/config with K >= {len(ins.contexts)} or drop contexts (nothing is truncated silently)")
        for k, c in enumerate(ins.contexts):
            if not uint8:
                ctx_image[b, k] = resize_image(c.image, R)
            elif c.image.shape[:2] == (R, R):
                ctx_image[b, k] = c.image
            else:
                ctx_image[b, k] = np.round((resize_image(c.image, R) + 1.0) * 127.5).astype(np.uint8)
            where.append((b, k))
            ctx_texts.append(c.text)
    if where:  # every context text in one call
        bs, ks = np.asarray(where).T
        ctx_ids[bs, ks] = encode(ctx_texts, ctx_text_len)
        ctx_mask[bs, ks] = True
    texts = [ins.text for ins in instructions] if texts is None else list(texts)
    text_ids = np.asarray(encode([t or "" for t in texts], text_len), np.int32)
    text_ids[[t is None for t in texts]] = 0
    return {"text_ids": text_ids, "ctx_image": ctx_image, "ctx_ids": ctx_ids, "ctx_mask": ctx_mask}
