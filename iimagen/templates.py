"""Instruction templates per task (paper §3.2, App. A.3.2), loaded from `data/templates/`.

The paper had GPT-4 write 100 "highly varied" templates per dataset, with placeholders where the context goes; each
placeholder becomes a reference marker plus a short prompt ("...of [ref#1] a dog, using the caption: ..."). Control
tasks also get a per-control **prefix** that hints at the task scope. The kit ships >= 25 hand-written templates per
training task (`train.json`) and keeps the zero-shot compositions in a separate, eval-only file (`zero_shot.json`).

    >>> rng = np.random.default_rng(0)
    >>> render("edge_to_image", rng, caption="a red circle", refs=["[ref#1] edge map"])
    'Edge-to-image generation. With [ref#1] edge map as your guide, generate an image that reflects the caption: a r...'

Placeholders: `{caption}` (the target caption) and `{ref1}`, `{ref2}` (short context prompts, each starting with its
marker). `spec(task)` says which a task needs: `refs` lists what each ref is (e.g. style_transfer: style, content).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np

from . import paths

TRAIN_FILE, ZERO_SHOT_FILE = "train.json", "zero_shot.json"
TASKS = ("text_to_image", "edge_to_image", "depth_to_image", "mask_to_image", "sketch_to_image", "subject",
         "styled_generation", "style_transfer")
ZERO_SHOT = ("style_subject", "multi_subject", "control_subject", "control_style")
CONTROLS = ("edge", "depth", "mask", "sketch")
_FIELD = re.compile(r"\{(\w+)\}")


class TemplateError(ValueError):
    """A bad task name, a missing or extra field, or a malformed template file; the message names the fix."""


@functools.lru_cache(maxsize=4)
def _load(folder: str) -> dict:
    folder = Path(folder)
    out = {"tasks": {}, "prefixes": {}}
    for name in (TRAIN_FILE, ZERO_SHOT_FILE):
        path = paths.require(folder / name, "template file", "Restore data/templates/ from the repository.")
        d = json.loads(path.read_text())
        for task, v in d["tasks"].items():
            out["tasks"][task] = dict(v, zero_shot=name == ZERO_SHOT_FILE)
        out["prefixes"].update(d.get("prefixes", {}))
    return out


def load(folder=None) -> dict:
    """{'tasks': {task: {'refs', 'caption', 'templates', 'prefix'?, 'zero_shot'}}, 'prefixes': {control: str}}."""
    return _load(str(folder or paths.TEMPLATES))


def spec(task: str) -> dict:
    """What `render(task, ...)` needs: {'refs': [kind per ref], 'caption': bool, 'zero_shot': bool, 'n': #templates}."""
    tasks = load()["tasks"]
    if task not in tasks:
        raise TemplateError(f"task {task!r} is unknown; use one of {', '.join(TASKS)} or (eval only) "
                            f"{', '.join(ZERO_SHOT)}")
    t = tasks[task]
    return {"refs": list(t["refs"]), "caption": t["caption"], "zero_shot": t["zero_shot"], "n": len(t["templates"])}


def fill(template: str, caption: str | None = None, refs=()) -> str:
    """Fill one template's `{caption}`, `{ref1}`, `{ref2}`, ...; a missing value is an error, never left over."""
    values = {f"ref{i}": r for i, r in enumerate(refs, start=1)}
    if caption is not None:
        c = caption.strip()
        values["caption"] = c if template.rstrip().endswith("{caption}") else c.rstrip(".")

    def sub(m):
        if m.group(1) not in values:
            raise TemplateError(f"template {template!r} needs {{{m.group(1)}}}; pass it to render()")
        return values[m.group(1)]

    return _FIELD.sub(sub, template)


def render(task: str, rng: np.random.Generator, caption: str | None = None, refs=(), control: str | None = None,
           prefix: bool = True) -> str:
    """A random phrasing of `task` (one of `TASKS`, or for evaluation `ZERO_SHOT`), filled in.

    caption: the target caption (every task but style_transfer needs one).
    refs:    the context prompts in slot order, each starting with its marker, e.g. ["[ref#1] edge map"];
             exactly as many as `spec(task)['refs']` (style_transfer: [style, content]; control_subject: [subject,
             control]; control_style: [control, style]).
    control: for control_subject / control_style, the control kind whose prefix to prepend (edge/depth/mask/sketch);
             the four control tasks use their own. `prefix=False` leaves the control prefix out.
    rng:     a `np.random.Generator` (or an int seed) picks the template.
    """
    s = spec(task)
    if isinstance(refs, str):
        refs = [refs]
    refs = list(refs)
    if len(refs) != len(s["refs"]):
        raise TemplateError(f"render({task!r}): refs has {len(refs)} items; give exactly {len(s['refs'])} "
                            f"({', '.join(s['refs']) or 'none'}), e.g. ['[ref#1] edge map']")
    for i, r in enumerate(refs):
        if not isinstance(r, str) or not r.strip():
            raise TemplateError(f"render({task!r}): refs[{i}] must be a non-empty string such as '[ref#{i + 1}] "
                                f"{s['refs'][i]} image'")
    if s["caption"] and (not isinstance(caption, str) or not caption.strip()):
        raise TemplateError(f"render({task!r}): caption must be a non-empty string (the target's caption)")
    if not s["caption"] and caption is not None:
        raise TemplateError(f"render({task!r}): this task takes no caption (its text carries no content); drop it")
    t = load()["tasks"][task]
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    text = fill(t["templates"][int(rng.integers(len(t["templates"])))], caption, refs)
    kind = t.get("prefix") or control
    if control is not None and control not in CONTROLS:
        raise TemplateError(f"render({task!r}): control={control!r}; use one of {', '.join(CONTROLS)}")
    if prefix and kind:
        text = load()["prefixes"][kind] + " " + text
    return text


def all_templates(zero_shot: bool = False) -> dict[str, list[str]]:
    """Every template of every training task (or of the zero-shot tasks): the tokenizer trains on these."""
    names = ZERO_SHOT if zero_shot else TASKS
    return {k: list(load()["tasks"][k]["templates"]) for k in names}
