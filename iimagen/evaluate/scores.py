"""Scores (paper §5.1, Tables 3-4): SC / PQ / O per example and task, KID, generation through `pipeline.Generator`,
the context-use probe, the tables, Fig. 4 and `iimagen eval`."""
from __future__ import annotations


import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from .. import tasks as T
from .. import world as W
from ..data import parse_variant
from .judges import (BLANK_STD, CONTEXT_USE_MIN_N, IDENTITY_CANDIDATES, IN_DOMAIN, ZERO_SHOT, EvalError, iou,
                     judge_control, judge_features, judge_layout, judge_objects, judge_realism, judge_style,
                     judge_subject, load_judges, resize_u8, unit_float)

# ---------------------------------------------------------------------------------------------------- scoring
def conditions(ex: T.Example) -> list[tuple[str, dict]]:
    """The conditions of an example's instruction, as (name, what to check): the caption's objects (unstyled targets
    only: a style recolours them), the control, the reference subjects, the reference style, the content layout."""
    tr, ctx = ex.truth, ex.instruction.contexts
    out = []
    if tr.get("caption") and not tr.get("style"):
        out.append(("objects", {}))
    for c in ctx:
        if c.kind in W.CONTROLS:
            out.append(("control", {"kind": c.kind, "image": c.image}))
    if tr.get("subjects") and ex.task != "retrieval":
        out.append(("subject", {"keys": list(tr["subjects"])}))
    if tr.get("style") and ex.task != "retrieval":
        out.append(("style", {"style": tr["style"]}))
    for c in ctx:
        if c.kind == "content":
            out.append(("layout", {"image": c.image}))
    return out


def score_image(ex: T.Example, img: np.ndarray, judges: dict | None = None, X: np.ndarray | None = None) -> dict:
    """SC per condition, SC = the least satisfied judged condition, PQ, and the continuous values (paper §5.1).
    A judge that does not qualify in the report (`qualifies`) leaves its condition unjudged (None)."""
    judges = judges or load_judges()
    img = np.asarray(img)
    unit_float(img)
    X = judge_features(img)[0] if X is None else X
    ok = judges["report"]["qualifies"]
    per = {}
    for name, c in conditions(ex):
        if name == "objects":
            r = judge_objects(img, ex.truth)
            if r is None:
                continue
        elif name == "control" and ex.truth.get("style"):  # a style recolours: compare coarse structure instead
            r = judge_layout(img, resize_u8(c["image"], img.shape[0]))
        elif name == "control":
            r = judge_control(img, c["kind"], c["image"], ex.truth["background"])
        elif name == "subject":  # the least well drawn of the subjects (each ranked among 8)
            rs = [judge_subject(img, ex, k) for k in c["keys"]] if ok.get("subject") else None
            r = None if rs is None else dict(min(rs, key=lambda q: q["sc"]), ranks=[q["rank"] for q in rs])
        elif name == "style":
            r = judge_style(img, ex) if ok.get("style") else None
        else:
            r = judge_layout(img, resize_u8(c["image"], img.shape[0]))
        per[name] = r
    judged = [r["sc"] for r in per.values() if r is not None]
    pq = judge_realism(X, judges)
    if float(img.std()) < BLANK_STD:  # a blank (collapsed) output: PQ 0, exactly
        pq = {"pq": 0.0, "value": 0.0}
    keep = ("sc", "value", "iou", "ranks", "rank")
    return {"task": ex.task, "conditions": {k: (None if r is None else {q: r[q] for q in keep if q in r})
                                            for k, r in per.items()},
            "sc": min(judged) if judged else None, "pq": pq["pq"], "realism": pq["value"]}


def overall(sc: list, pq: list) -> float:
    """O = sqrt(mean SC x mean PQ), per task as paper Table 4."""
    sc = [s for s in sc if s is not None]
    if not sc or not pq:
        return float("nan")
    return float(np.sqrt(np.mean(sc) * np.mean(pq)))


def kid(X: np.ndarray, Y: np.ndarray) -> float:
    """Kernel Inception Distance in the judges' feature space: unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), x1000."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    if len(X) < 2 or len(Y) < 2:
        return float("nan")
    d = X.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(X, X), k(Y, Y), k(X, Y)
    m, n = len(X), len(Y)
    v = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()
    return float(1000 * v)


def score_examples(examples: list, images: list, judges: dict | None = None) -> dict:
    """Per-example scores and the task summary {sc, pq, o, kid, n} of outputs `images` for `examples` (one task)."""
    if len(examples) != len(images):
        raise EvalError(f"score_examples: {len(examples)} examples but {len(images)} images; give one image each")
    judges = judges or load_judges()
    X = judge_features(np.stack([np.asarray(i) for i in images]))
    per = [score_image(e, im, judges, x) for e, im, x in zip(examples, images, X)]
    targets = np.stack([resize_u8(e.target, np.asarray(images[0]).shape[0]) for e in examples])
    sc, pq = [p["sc"] for p in per], [p["pq"] for p in per]
    conds = sorted({k for p in per for k in p["conditions"]})
    summary = {"sc": float(np.mean([s for s in sc if s is not None])) if any(s is not None for s in sc) else None,
               "pq": float(np.mean(pq)), "o": overall(sc, pq), "n": len(per),
               "kid": kid(X, judge_features(targets)),
               "realism": float(np.mean([p["realism"] for p in per])),
               "conditions": {c: float(np.mean([p["conditions"][c]["sc"] for p in per
                                                if p["conditions"].get(c) is not None] or [np.nan])) for c in conds},
               "values": {c: float(np.mean([p["conditions"][c]["value"] for p in per
                                            if p["conditions"].get(c) is not None] or [np.nan])) for c in conds},
               "each": {"sc": sc, "pq": pq}}  # per example, in order: what `intervals` resamples
    for c in ("subject", "style"):  # rank-1 among IDENTITY_CANDIDATES (chance 0.125) and top-3 (0.375)
        ranks = np.asarray([r for p in per if p["conditions"].get(c) for r in
                            p["conditions"][c].get("ranks", [p["conditions"][c]["rank"]])])
        if len(ranks):
            summary[f"{c}_rank1"], summary[f"{c}_top3"] = float(np.mean(ranks == 1)), float(np.mean(ranks <= 3))
    return {"summary": summary, "examples": per}


# --------------------------------------------------------------------------------------------- generation
def variant_texts(examples: list, variant: str | None) -> list | None:
    """The texts a model trained with `variant` reads in place of the instructions': None (the instructions') for
    Instruct-Imagen and the single-task models, `tasks.no_instruction_text` (None: all pad) for the multi-task one."""
    try:
        kind, _ = parse_variant(variant)
    except ValueError as e:
        raise EvalError(str(e)) from None
    return [T.no_instruction_text(e) for e in examples] if kind == "no_instruction" else None


def model_batch(examples: list, tokenizer, cfg, variant: str | None = None) -> dict:
    """The instruction batch (docs/contracts.md) of `examples` for a model trained with `variant` (None/'instruct':
    the instruction text; 'no_instruction': `tasks.no_instruction_text`, all pad when None)."""
    from ..instruction import batch_instructions

    return batch_instructions([e.instruction for e in examples], tokenizer, cfg.resolution, cfg.K, cfg.text_len,
                              cfg.ctx_text_len, texts=variant_texts(examples, variant))


def model_variant(gen) -> str:
    """The training variant recorded in a Generator's checkpoint meta ('instruct' when absent)."""
    return str((getattr(gen, "meta", None) or {}).get("variant") or "instruct")


def generate(gen, examples: list, variant: str | None = None, sampler: str = "ddim", steps: int | None = 50,
             seed: int = 0, batch_size: int = 16, guidance=None, clip: str = "static") -> list[np.ndarray]:
    """Outputs of a `pipeline.Generator` for `examples` (its own sampling loop: each with its own key (seed, index)),
    with the text the model was trained on: the instruction, or for the multi-task baseline the caption."""
    texts = variant_texts(examples, variant or model_variant(gen))
    if not gen.cfg.use_context and guidance is not None and guidance.references:  # no context items to guide by
        guidance = dataclasses.replace(guidance, references=())
    return gen.generate([e.instruction for e in examples], sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                        batch_size=batch_size, progress=False, clip=clip, texts=texts)


# ------------------------------------------------------------------------------------------------- context use
def _target_batch(examples: list, tokenizer, cfg, variant: str | None = None) -> dict:
    """`model_batch` plus the targets as `image` in [-1, 1] (what the denoising loss needs)."""
    b = model_batch(examples, tokenizer, cfg, variant)
    b["image"] = np.stack([np.asarray(e.target, np.float32) / 127.5 - 1.0 for e in examples])
    return b


def _context_model(model, who: str):
    """(cfg, graphdef, state) of a model with a context branch; a text-to-image model is a clear error."""
    from flax import nnx

    if not model.cfg.use_context:
        raise EvalError(f"{who}: this is a text-to-image model (cfg.use_context=False); it has no context")
    return (model.cfg, *nnx.split(model))


def context_use(model, tokenizer, tasks=IN_DOMAIN, n: int = 64, seed: int = 0, t_range=(0.5, 1.0),
                variant: str | None = None, batch_size: int = 32, split: str = "test", anonymous: bool = False,
                examples: dict | None = None) -> dict:
    """Does the model read its context? The denoising loss (paper App. A.2.2) on `n` examples per task (held out by
    default, see `split`) with the true context, with the context of another example (the batch rolled by one) and
    with none (every slot empty), at the same t ~ U[t_range] and noise. `gain` = 1 - true / shuffled: 0 means the
    context branch is not used at all (the outputs would be the same with any reference); the mid-to-high noise
    levels of the default range are where a reference decides the layout. `split='train'` draws the training
    subjects and styles instead of the held-out ones (a model that knows a training subject by its name need not read
    its reference); `anonymous=True` names them as training does (nonce names, `tasks.draw_spec`). `examples`
    ({label: [Example]}, e.g. stage-1 examples whose target shows a subject) are measured instead of `tasks`.
    Returns {task: {"true", "shuffled", "none", "gain"}}."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..diffusion import diffusion_loss

    cfg, graphdef, state = _context_model(model, "context_use")

    @jax.jit
    def losses(state, b, key):
        m = nnx.merge(graphdef, state)
        text = m.encode_text(b["text_ids"])
        out = {}
        for name, (ci, cid, cm) in {
                "true": (b["ctx_image"], b["ctx_ids"], b["ctx_mask"]),
                "shuffled": tuple(jnp.roll(b[k], 1, axis=0) for k in ("ctx_image", "ctx_ids", "ctx_mask")),
                "none": (b["ctx_image"], b["ctx_ids"], b["no_ctx_mask"])}.items():
            ctx = m.encode_context(ci, cid, cm)
            # the training loss itself; the same key gives every variant the same t and noise
            _, per = diffusion_loss(lambda x_t, t, *_: m.denoise(x_t, t, text, ctx), b, key, t_range)
            out[name] = jnp.sum(per)
        return out

    if examples is None:
        examples = {task: T.sample(task, n, seed, cfg.resolution, split=split, anonymous=anonymous) for task in tasks}
    res = {}
    for ti, (task, exs) in enumerate(examples.items()):
        n = len(exs)
        tot = {"true": 0.0, "shuffled": 0.0, "none": 0.0}
        for s in range(0, n, batch_size):  # (a shorter last batch compiles once more)
            chunk = exs[s:s + batch_size]
            b = _target_batch(chunk, tokenizer, cfg, variant)
            # every slot empty, passed in as data: an all-False mask made inside the jit is a constant, and XLA then
            # spends seconds folding the masked attention of the "none" pass (and warns about it)
            b["no_ctx_mask"] = np.zeros_like(b["ctx_mask"])
            got = losses(state, b, jax.random.fold_in(jax.random.PRNGKey(seed), ti * 100_003 + s))
            for key in tot:
                tot[key] += float(got[key])
        r = {key: v / n for key, v in tot.items()}
        r["gain"] = 1.0 - r["true"] / r["shuffled"]
        res[task] = r
    return res


def context_alignment(model, tokenizer, tasks=("depth_to_image", "subject"), n: int = 16, seed: int = 0,
                      t: float = 0.7, split: str = "test") -> dict:
    """How does the model read its references? Per task and per context cross-attention block on the context's own
    grid: `own` = attention mass on the context tokens at the query's own position (place-to-place reading, what a
    control needs; `uniform` = what even attention gives), and for subject tasks `subject` = mass on the tokens
    where the reference shows its subject (content reading, what copying a subject needs) against `subject_uniform`
    (the subject's share of the valid tokens). One noisy target x_t at time `t` per example.
    Returns {task: {block: {"own", "uniform"[, "subject", "subject_uniform"]}}}."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..diffusion import q_sample

    cfg, graphdef, state = _context_model(model, "context_alignment")

    @jax.jit
    def attention(state, b, noise):
        m = nnx.merge(graphdef, state)
        x_t = q_sample(b["image"], jnp.full(b["image"].shape[:1], t), noise)
        ctx = m.encode_context(b["ctx_image"], b["ctx_ids"], b["ctx_mask"])
        return m.denoise(x_t, jnp.full(b["image"].shape[:1], t), m.encode_text(b["text_ids"]), ctx,
                         return_attention=True)[1]

    r, K = cfg.bottleneck_resolution, cfg.K
    res = {}
    for task in tasks:
        specs = T.sample_specs(task, n, seed, split)
        exs = [T.realize(sp, cfg.resolution) for sp in specs]
        b = _target_batch(exs, tokenizer, cfg)
        att = attention(state, b, jax.random.normal(jax.random.PRNGKey(seed), b["image"].shape))
        share = np.zeros((n, K, r * r))  # each context token's share of subject pixels
        for i, sp in enumerate(specs):
            for k, ref in enumerate(sp.refs[:K]):
                if ref.kind == "subject":
                    share[i, k] = _subject_pixels(ref, cfg.resolution, r)[1]
        valid = np.repeat(np.asarray(b["ctx_mask"], bool)[:, :, None], r * r, axis=2)
        out = {}
        for name, w in att.items():
            w = np.asarray(w, np.float64)  # [B, heads, Q, K*T]
            if w.shape[2] != r * r:
                continue
            w = w.reshape(*w.shape[:3], K, r * r)
            q = np.arange(r * r)
            row = {"own": float(w[:, :, q, :, q].sum(-1).mean()), "uniform": 1.0 / (r * r)}
            if share.any():
                row["subject"] = float(np.einsum("bhqkt,bkt->", w, share) / (w.shape[1] * r * r * n))
                row["subject_uniform"] = float(np.mean([share[i][valid[i]].mean() for i in range(n)]))
            out[name] = row
        res[task] = out
    return res


def _subject_pixels(ref: T.Ref, R: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The visible coverage of the subject(s) in a reference's render, float [R, R], and each context token's share of
    it on the r x r bottleneck grid, float [r*r]."""
    rend = W.render(ref.scene, R)
    vis = sum(v for o, v in zip(ref.scene.objects, rend.visible()) if o.subject)
    return vis, vis.reshape(r, R // r, r, R // r).mean((1, 3)).ravel()


def context_use_markdown(use: dict) -> str:
    """{model: context_use(...)} -> a markdown table: per task, true / shuffled / no-context loss and the gain."""
    tasks = list(dict.fromkeys(t for r in use.values() for t in r))
    rows = ["", "Context use (`context_use`: denoising loss at t in [0.5, 1] with the true context / another "
                "example's / none; gain = 1 - true / another's; 0 = the context is not read):", "",
            "| task | " + " | ".join(use) + " |", "|---" * (len(use) + 1) + "|"]
    for t in tasks:
        cells = [f"{r[t]['true']:.4f} / {r[t]['shuffled']:.4f} / {r[t]['none']:.4f}, **{100 * r[t]['gain']:+.0f} %**"
                 if t in r else "" for r in use.values()]
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------------- tables
GROUND_TRUTH, NOISE = "Ground truth (anchor)", "Random noise (anchor)"
NAMES = {"instruct-imagen": "Instruct-Imagen", "instruct-imagen-two-readers": "Instruct-Imagen (two readers)",
         "multitask": "Multi-task (no instruction)",
         "no-stage1": "Instruct-Imagen w/o stage 1", "stage1": "Stage 1 only", "stage0": "Stage 0 (text-to-image)"}


def display_name(folder) -> str:
    """A table column's name: the kit's names for the shipped kinds, else the folder's name (a run's, for
    `RUN/export` or a workdir)."""
    p = Path(folder)
    name = p.parent.name if p.name == "export" else p.name
    for k in sorted(NAMES, key=len, reverse=True):
        if name.startswith(k):
            return NAMES[k]
    return name


def evaluate_models(models: dict, tasks=IN_DOMAIN + ZERO_SHOT, n: int = 16, seed: int = 0,
                    resolution: int | None = None, sampler: str = "ddim", steps: int | None = 50,
                    anchors: bool = True, judges: dict | None = None, progress: bool = True,
                    guidance=None, clip: str = "dynamic") -> dict:
    """{model name: {task: summary}} for `models` {name: Generator} on `n` test-split examples per task (held-out
    subjects and styles), plus the anchors: the ground-truth targets (near 1) and random noise (near 0). A value may
    be a dict {task: Generator} (the single-task baselines: one model per task). A model that cannot take a task's
    contexts (K too small, a text-only model) or has no model for it gets None for that task."""
    from tqdm.auto import tqdm

    judges = judges or load_judges()
    first = next(iter(models.values()), None)
    first = next(iter(first.values()), None) if isinstance(first, dict) else first
    R = resolution or (first.cfg.resolution if first is not None else 32)
    res = {name: {} for name in ([GROUND_TRUTH, NOISE] if anchors else []) + list(models)}
    for task in tqdm(list(tasks), desc="tasks", disable=not progress):
        exs = T.sample(task, n, seed, R, split="test")
        if anchors:
            res[GROUND_TRUTH][task] = score_examples(exs, [e.target for e in exs], judges)["summary"]
            rng = np.random.default_rng([seed, 7])
            noise = [rng.integers(0, 256, (R, R, 3), dtype=np.uint8) for _ in exs]
            res[NOISE][task] = score_examples(exs, noise, judges)["summary"]
        for name, gen in models.items():
            if isinstance(gen, dict):  # single-task models: {task: Generator}, each on its own task only
                gen = gen.get(task)
            if gen is None or (not gen.cfg.use_context and any(e.instruction.contexts for e in exs)) or \
                    max(len(e.instruction.contexts) for e in exs) > gen.cfg.K:
                res[name][task] = None
                continue
            imgs = [resize_u8(i, R) for i in generate(gen, exs, sampler=sampler, steps=steps, seed=seed,
                                                       guidance=guidance, clip=clip)]
            res[name][task] = score_examples(exs, imgs, judges)["summary"]
    return res


def averages(per_task: dict, tasks) -> dict | None:
    """Group average as Table 4: mean SC, mean PQ over tasks, O = sqrt(mean SC x mean PQ)."""
    rows = [per_task.get(t) for t in tasks if per_task.get(t) and per_task[t]["sc"] is not None]
    if not rows:
        return None
    sc, pq = float(np.mean([r["sc"] for r in rows])), float(np.mean([r["pq"] for r in rows]))
    return {"sc": sc, "pq": pq, "o": float(np.sqrt(sc * pq))}


def intervals(results: dict, reps: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Bootstrap intervals of each model's in-domain and zero-shot average O (Table 3), and of the first model's
    minus each other model's (the paper's comparisons: Instruct-Imagen against the multi-task baseline and the
    ablation without stage 1). Each replicate resamples every task's examples with replacement, the same indices
    for every model (all models are scored on the same examples), and recomputes `averages`. Anchors are left out.

    Returns {group: {"o": {model: [point, low, high]}, "minus": {model: [point, low, high]}}, "reps", "level"};
    a model without per-example scores (`each`) for every task of a group is left out of it."""
    rng = np.random.default_rng(seed)
    names = [m for m in results if m not in (GROUND_TRUTH, NOISE)]
    out = {"reps": reps, "level": level}
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    for group, tasks in (("in_domain", IN_DOMAIN), ("zero_shot", ZERO_SHOT)):
        has = lambda m, t: bool((results[m].get(t) or {}).get("each"))  # noqa: E731
        tasks = [t for t in tasks if names and has(names[0], t)]
        ms = [m for m in names if tasks and all(has(m, t) for t in tasks)]
        if not ms:
            continue
        n = {t: len(results[ms[0]][t]["each"]["pq"]) for t in tasks}
        arr = {m: {t: (np.array([np.nan if v is None else v for v in results[m][t]["each"]["sc"]], float),
                       np.array(results[m][t]["each"]["pq"], float)) for t in tasks} for m in ms}

        def o(m, idx):
            sc = np.mean([np.nanmean(arr[m][t][0][idx[t]]) for t in tasks])
            pq = np.mean([np.mean(arr[m][t][1][idx[t]]) for t in tasks])
            return float(np.sqrt(sc * pq))

        point = {m: o(m, {t: np.arange(n[t]) for t in tasks}) for m in ms}
        draws = {m: [] for m in ms}
        for _ in range(reps):
            idx = {t: rng.integers(0, n[t], n[t]) for t in tasks}
            for m in ms:
                draws[m].append(o(m, idx))
        draws = {m: np.asarray(v) for m, v in draws.items()}
        ci = lambda x: [float(np.percentile(x, lo)), float(np.percentile(x, hi))]  # noqa: E731
        first = ms[0]
        out[group] = {"o": {m: [point[m]] + ci(draws[m]) for m in ms},
                      "minus": {m: [point[first] - point[m]] + ci(draws[first] - draws[m]) for m in ms[1:]},
                      "first": first, "n": n}
    return out


def intervals_markdown(iv: dict) -> str:
    """The `intervals` as a table: average O [95 % interval] per model, and the first model minus each other."""
    groups = [g for g in ("in_domain", "zero_shot") if g in iv]
    if not groups:
        return ""
    f = lambda v: f"{v[0]:+.3f} ({v[1]:+.3f}, {v[2]:+.3f})"  # noqa: E731
    first = iv[groups[0]]["first"]
    lines = ["", f"Average O with {iv['level']:.0%} bootstrap intervals ({iv['reps']} replicates, examples resampled "
             f"within each task), and `{first}` minus each other model:", "",
             "| model | " + " | ".join(f"{g.replace('_', '-')} O" for g in groups) + " | "
             + " | ".join(f"{first} minus it, {g.replace('_', '-')}" for g in groups) + " |",
             "|---|" + "---|" * (2 * len(groups))]
    for m in iv[groups[0]]["o"]:
        lines.append(f"| {m} | " + " | ".join(f(iv[g]["o"][m]).replace("+", "") for g in groups) + " | "
                     + " | ".join(f(iv[g]["minus"][m]) if m in iv[g]["minus"] else "-" for g in groups) + " |")
    return "\n".join(lines) + "\n"


def table_markdown(results: dict) -> str:
    """Paper Table 4 (SC / PQ / O per task and model) with Table 3's in-domain and zero-shot averages, and KID."""
    models = list(results)
    cell = lambda r: "-" if not r else f"{r['sc']:.2f} / {r['pq']:.2f} / **{r['o']:.2f}**"  # noqa: E731
    lines = ["| task | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for group, tasks in (("In-domain", IN_DOMAIN), ("Zero-shot", ZERO_SHOT)):
        present = [t for t in tasks if any(t in results[m] for m in models)]
        for t in present:
            lines.append(f"| {t} | " + " | ".join(cell(results[m].get(t)) for m in models) + " |")
        if present:
            lines.append(f"| **{group} avg** | " + " | ".join(cell(averages(results[m], present)) for m in models)
                         + " |")
    lines += ["", "Cells: SC / PQ / O (O = sqrt(mean SC x mean PQ)). KID x1000 in the judges' feature space "
              "(lower is better):", "", "| task | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for t in [t for t in IN_DOMAIN + ZERO_SHOT if any(t in results[m] for m in models)]:
        lines.append(f"| {t} | " + " | ".join("-" if not results[m].get(t) else f"{results[m][t]['kid']:.1f}"
                                              for m in models) + " |")
    for c in ("subject", "style"):
        key = f"{c}_rank1"
        ranked = [t for t in IN_DOMAIN + ZERO_SHOT if any(key in (results[m].get(t) or {}) for m in models)]
        if ranked:
            lines += ["", f"{c.capitalize()} identity: rank 1 of the reference's {c} among "
                      f"{IDENTITY_CANDIDATES} of its region (`{key}`; chance {1 / IDENTITY_CANDIDATES:.3f}):", "",
                      "| task | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
            for t in ranked:
                lines.append(f"| {t} | " + " | ".join(f"{results[m][t][key]:.2f}" if key in (results[m].get(t) or {})
                                                      else "-" for m in models) + " |")
    return "\n".join(lines) + "\n"


def plot_fig4(results: dict, path=None):
    """Bars of O per task and model, in-domain then zero-shot (like the paper's Fig. 4)."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models = list(results)
    tasks = [t for t in IN_DOMAIN + ZERO_SHOT if any(results[m].get(t) for m in models)]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(tasks)), 3.8))
    w = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        vals = [(results[m].get(t) or {}).get("o", np.nan) for t in tasks]
        bars = ax.bar(np.arange(len(tasks)) + i * w, np.nan_to_num(vals), w, label=m)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, "N/A" if np.isnan(v) else f"{100 * v:.0f}",
                    ha="center", va="bottom", fontsize=6)
    ax.axvline(len([t for t in tasks if t in IN_DOMAIN]) - 0.1, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - w / 2)
    ax.set_xticklabels(tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("O (overall)")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, ncol=3, loc="upper right")
    ax.set_title("Overall score O per task: in-domain | zero-shot (cf. paper Fig. 4)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def cli_eval(argv=None) -> int:
    """`iimagen eval --checkpoint DIR [--baselines DIR ...] --out DIR [--n 16] [--sampler ddim --steps 50]`: writes
    OUT/table.md, OUT/scores.json and OUT/fig4.png. Baselines whose meta says variant='single_task=<task>' form one
    "Single-task" column (each on its own task; a second model of a task gets a column "Single-task (RUN)");
    'no_instruction' models see `tasks.no_instruction_text`."""
    from ..checkpoint import export_of
    from ..cli import fail
    from ..paths import atomic_write, check_output
    from ..pipeline import Generator, add_sampling_args, sampling_args

    p = argparse.ArgumentParser(prog="iimagen eval", description=cli_eval.__doc__.split(":")[0])
    p.add_argument("--checkpoint", required=True, help="exported Instruct-Imagen folder (or a run's workdir)")
    p.add_argument("--baselines", nargs="*", default=[], help="more exported folders or workdirs (multi-task, w/o stage 1, ...)")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite table.md, scores.json and fig4.png in --out")
    p.add_argument("--n", type=int, default=16, help="examples per task")
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="*", default=None, help="default: all in-domain and zero-shot tasks")
    p.add_argument("--context-use", action="store_true",
                   help="also measure each model's loss with the true / another example's / no context (context_use)")
    a = p.parse_args(argv)
    outputs = ("table.md", "scores.json", "fig4.png")
    try:
        s = sampling_args(a)  # a bad value fails before any load
        if a.n < 1:
            raise EvalError(f"--n {a.n}: give at least 1 example per task")
        tasks = a.tasks or list(IN_DOMAIN + ZERO_SHOT)
        for t in tasks:
            if t not in IN_DOMAIN + ZERO_SHOT:
                raise EvalError(f"--tasks {t!r}: use some of {', '.join(IN_DOMAIN + ZERO_SHOT)}")
        check_output(a.out, outputs, a.force)  # before any model is loaded: the results are never lost to a bad --out
        models, given = {}, set()
        for d in [a.checkpoint] + list(a.baselines):
            folder = export_of(d).resolve()
            if folder in given:
                raise EvalError(f"{d} is given twice; give each checkpoint once")
            given.add(folder)
            gen = Generator.load(d)
            v = model_variant(gen)
            name = display_name(d)
            if v.startswith("single_task="):  # grouped into one "Single-task" column, as the paper's Table 4
                task = v.split("=", 1)[1]
                # a second model of a task already there (two runs to compare) gets a column of its own
                col = next(c for c in ("Single-task", f"Single-task ({name})", f"Single-task ({d})")
                           if task not in models.get(c, {}))
                models.setdefault(col, {})[task] = gen
                continue
            models[name if name not in models else str(d)] = gen  # two runs of one kind: their paths tell them apart
        res = evaluate_models(models, tasks, a.n, a.seed, sampler=s["sampler"], steps=s["steps"],
                              guidance=s["guidance"], clip=s["clip"])
        use = {}
        if a.context_use:
            with_ctx = [t for t in tasks if t != "text_to_image"]
            for name, g in models.items():  # one call per model: one compile for all its tasks
                for gen, ts in ([(gen, [t]) for t, gen in g.items()] if isinstance(g, dict) else [(g, with_ctx)]):
                    ts = [t for t in ts if t in with_ctx]
                    if ts and gen.cfg.use_context:
                        use.setdefault(name, {}).update(context_use(
                            gen.model, gen.tokenizer, ts, max(a.n, CONTEXT_USE_MIN_N), a.seed,
                            variant=model_variant(gen)))
    except (ValueError, FileNotFoundError) as e:
        return fail("iimagen eval", e)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    iv = intervals(res)
    table = table_markdown(res) + intervals_markdown(iv) + (context_use_markdown(use) if use else "")
    atomic_write(out / "table.md", lambda f: f.write_text(table))
    scores = json.dumps({
        "results": res, "intervals": iv, "context_use": use, "n": a.n, "sampler": s["sampler"], "steps": s["steps"],
        "guidance": s["guidance_text"], "context_guidance": a.context_guidance, "reference_guidance": a.reference_guidance,
        "oscillate": s["guidance"].oscillate, "clip": s["clip"], "seed": a.seed,
        "judges": load_judges()["report"]}, indent=1)
    atomic_write(out / "scores.json", lambda f: f.write_text(scores))
    atomic_write(out / "fig4.png", lambda f: plot_fig4(res, f))
    print(json.dumps({"out": str(out), "models": list(res), "tasks": len(tasks)}))
    return 0
