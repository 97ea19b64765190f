"""Human rating study (paper §5.1, ImagenHub's rubric): people score SC and PQ in {0, 0.5, 1} for blinded outputs.

    >>> study = RatingStudy(examples, {"Instruct-Imagen": imgs_a, "Multi-task": imgs_b}, rater="ann",
    ...                     path="out/ratings.jsonl")   # the default: out/ratings.jsonl under the current folder
    >>> study.widget          # in a notebook: the instruction, outputs side by side in random order, two scores each
    >>> ratings_table(load_ratings("ratings.jsonl"))   # the paper's table from ratings; agreement(...) across raters

Rubric [IH]: **SC** 0 = the output does not follow the instruction, 0.5 = it partly does (a condition missed),
1 = it follows every condition (with several conditions, score the least satisfied one). **PQ** 0 = unrecognisable /
heavy artifacts, 0.5 = recognisable with artifacts, 1 = looks like a clean image of the world.
Only widgets and calls common to ipywidgets 7.7.1 and 8.x are used (HTML, Image, ToggleButtons, Button, VBox/HBox).
"""
from __future__ import annotations

import html
import io
import json
import time
from pathlib import Path

import numpy as np

from .evaluate import IN_DOMAIN, ZERO_SHOT, EvalError, averages, overall

LEVELS = (0.0, 0.5, 1.0)
DEFAULT_PATH = "out/ratings.jsonl"  # relative: under the folder the study runs in (never a fixed system path)
RUBRIC = ("<b>SC</b> (semantic consistency): 0 = ignores the instruction, 0.5 = partly follows it, 1 = follows every "
          "condition (score the least satisfied one). <b>PQ</b> (perceptual quality): 0 = unrecognisable, "
          "0.5 = recognisable with artifacts, 1 = clean.")


def _png(img) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _instruction_png(ex) -> bytes:
    """The instruction drawn (its text and context images) as PNG bytes."""
    import matplotlib.pyplot as plt

    ins = getattr(ex, "instruction", ex)
    fig = ins.draw()
    fig = getattr(fig, "figure", fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class RatingStudy:
    """One rater's pass over `examples` (tasks.Example or Instruction) with `outputs` {model: [uint8 image per
    example]}: per example, the outputs in a random order (seeded by rater and example: blinded as "A", "B", ...),
    SC and PQ buttons under each, and "Save & next" appending one JSONL line per output to `path` (default
    `DEFAULT_PATH`, relative to the current folder: in Jupyter, the notebook's own folder)."""

    def __init__(self, examples: list, outputs: dict, rater: str, path=None, seed: int = 0):
        if not isinstance(rater, str) or not rater.strip():
            raise EvalError("RatingStudy: rater must be a non-empty id such as 'ann'")
        if not outputs or any(len(v) != len(examples) for v in outputs.values()):
            raise EvalError("RatingStudy: outputs must map each model to one image per example "
                            f"({len(examples)} examples)")
        self.examples, self.outputs, self.rater = list(examples), dict(outputs), rater
        self.path = Path(DEFAULT_PATH if path is None or str(path).strip() == "" else path).expanduser()
        self.models = list(outputs)
        self.seed, self.i = seed, 0
        self._build()
        self.show(0)

    def order(self, i: int) -> list[str]:
        """The blinded order of the models for example i (depends on the rater and i, not on the model names'
        order only)."""
        rng = np.random.default_rng([self.seed, i, sum(map(ord, self.rater))])
        return [self.models[j] for j in rng.permutation(len(self.models))]

    def _build(self):
        import ipywidgets as w

        self.header = w.HTML()
        self.instruction = w.Image(format="png")
        self.images = [w.Image(format="png", width=160, height=160) for _ in self.models]
        opts = [("0", 0.0), ("0.5", 0.5), ("1", 1.0)]
        self.sc = [w.ToggleButtons(options=opts, value=None, description="SC") for _ in self.models]
        self.pq = [w.ToggleButtons(options=opts, value=None, description="PQ") for _ in self.models]
        self.save = w.Button(description="Save & next", button_style="success")
        self.save.on_click(self.on_save)
        self.status = w.HTML()
        cols = [w.VBox([w.HTML(f"<b>{chr(65 + k)}</b>"), self.images[k], self.sc[k], self.pq[k]])
                for k in range(len(self.models))]
        self.widget = w.VBox([w.HTML(RUBRIC), self.header, self.instruction, w.HBox(cols), self.save, self.status])
        self.widget.add_class("iimagen-rating")
        self.status.add_class("iimagen-rating-status")

    def show(self, i: int):
        self.i = i
        if i >= len(self.examples):
            self.header.value = "<b>Done: thank you.</b>"
            self.save.disabled = True
            return
        ex = self.examples[i]
        self.header.value = f"Example {i + 1} / {len(self.examples)} (task: {getattr(ex, 'task', '?')})"
        self.instruction.value = _instruction_png(ex)
        for k, m in enumerate(self.order(i)):
            self.images[k].value = _png(self.outputs[m][i])
            self.sc[k].value = None
            self.pq[k].value = None

    def on_save(self, _button=None):
        """Append this example's ratings (every output needs SC and PQ) and show the next example."""
        missing = [chr(65 + k) for k in range(len(self.models)) if self.sc[k].value is None or self.pq[k].value is None]
        if missing:
            self.status.value = f"Rate SC and PQ of {', '.join(missing)} first."
            return False
        ex = self.examples[self.i]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            for k, m in enumerate(self.order(self.i)):
                f.write(json.dumps({"rater": self.rater, "item": self.i, "task": getattr(ex, "task", None),
                                    "model": m, "slot": chr(65 + k), "sc": float(self.sc[k].value),
                                    "pq": float(self.pq[k].value), "time": time.time()}) + "\n")
        self.status.value = f"Saved example {self.i + 1} to {html.escape(str(self.path.resolve()))}."
        self.show(self.i + 1)
        return True


def load_ratings(path) -> list[dict]:
    """The ratings of a JSONL file (one object per line: rater, item, task, model, sc, pq)."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            r = json.loads(line)
            if r.get("sc") not in LEVELS or r.get("pq") not in LEVELS:
                raise EvalError(f"{path}:{n}: sc and pq must be one of {LEVELS}, got {r.get('sc')}, {r.get('pq')}")
            out.append(r)
    return out


def ratings_table(ratings: list[dict]) -> dict:
    """{model: {task: {sc, pq, o, n}}} from ratings (mean over raters and items; O = sqrt(mean SC x mean PQ)),
    with "in_domain" / "zero_shot" averages as `evaluate.averages`; the same shape `evaluate.table_markdown` takes."""
    res: dict = {}
    for r in ratings:
        res.setdefault(r["model"], {}).setdefault(r["task"], []).append(r)
    out = {}
    for m, per in res.items():
        out[m] = {}
        for t, rs in per.items():
            sc, pq = [r["sc"] for r in rs], [r["pq"] for r in rs]
            out[m][t] = {"sc": float(np.mean(sc)), "pq": float(np.mean(pq)), "o": overall(sc, pq), "n": len(rs),
                         "kid": float("nan")}
        out[m]["in_domain"] = averages(out[m], IN_DOMAIN)
        out[m]["zero_shot"] = averages(out[m], ZERO_SHOT)
    return out


def krippendorff_alpha(units: list[list[float]]) -> float:
    """Krippendorff's alpha, interval metric: `units` = the values different raters gave one rated thing (units
    with fewer than 2 values are not pairable and ignored). 1 = perfect agreement, 0 = chance."""
    units = [list(u) for u in units if len(u) >= 2]
    vals = np.asarray([v for u in units for v in u], np.float64)
    n = len(vals)
    if n < 2:
        return float("nan")
    do = sum(sum((a - b) ** 2 for i, a in enumerate(u) for j, b in enumerate(u) if i != j) / (len(u) - 1)
             for u in units) / n
    de = float(((vals[:, None] - vals[None, :]) ** 2).sum()) / (n * (n - 1))
    return float("nan") if de == 0 else 1.0 - do / de


def agreement(ratings: list[dict]) -> dict:
    """Between raters, per score: Krippendorff's alpha (interval) and pairwise exact agreement over the outputs
    two raters both scored."""
    by: dict = {}
    for r in ratings:
        by.setdefault((r["item"], r["task"], r["model"]), {})[r["rater"]] = r
    out = {"raters": sorted({r["rater"] for r in ratings})}
    for key in ("sc", "pq"):
        units = [[v[key] for v in u.values()] for u in by.values()]
        pairs = [(a == b) for u in units for i, a in enumerate(u) for b in u[i + 1:]]
        out[key] = {"alpha": krippendorff_alpha(units), "pairwise": float(np.mean(pairs)) if pairs else float("nan"),
                    "pairs": len(pairs)}
    return out
