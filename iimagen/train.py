"""Training: stages 0, 1 and 2 of Instruct-Imagen in one loop (paper §3.2, App. A.2.2).

- **Stage 0** trains the text-to-image backbone on the world. It stands in for "the pre-trained Imagen", which is not
  public. The model has no context branch (`use_context=False`).
- **Stage 1**, retrieval-augmented training, starts from stage 0. `attach_context` adds the new context
  cross-attention at identity. Each example is 1 target + 3 neighbours with their raw captions.
- **Stage 2**, multi-modal instruction tuning, starts from stage 1 and trains on the task mixture of paper Table 1.

Baselines come from the same entry point (`--variant`):
- `no_instruction`: the multi-task model trained on raw inputs without instruction text (paper Table 3, "Multi-task").
- `single_task=<task>`: one model per task.
- `--mixture subject=0.8,edge_to_image=0`: Table 1's stage-2 weights with some changed (then renormalised), for
  ablations of the mixture's shares.
- Stage 2 with `--init` pointing at a stage-0 run gives "without stage 1" (paper Table 4).

Everything the paper fixes is the default:
- v-prediction with an L2 loss;
- Adafactor (β1 = 0.9), constant learning rate after a linear warm-up;
- gradient clipping;
- EMA of the weights, used for sampling.

Step counts and the learning rate are retuned for the small models here; see `STAGE_DEFAULTS`.

One code path serves 1 to N devices:
- a `Mesh` over all devices, with the batch sharded on the `data` axis;
- parameters replicated, or fsdp-sharded with `--fsdp`;
- multi-host runs call `jax.distributed.initialize()` first (`--distributed`), and each host loads its own shard.

Checkpoints are orbax (atomic, no pickle) and hold parameters, EMA, optimizer, step and config. The data are
deterministic in (seed, step), so a run killed at any point and started again with the same command continues with
the same batches and the same losses. Each checkpoint keeps a fingerprint of the data (`Loader.fingerprint`); a run
resumed on other data (a newer kit whose examples changed, another --seed or --names) warns and trains on.

Nothing silent, nothing lost (docs/reliability.md): every option is checked before anything is created or compiled;
a non-finite loss, gradient or weight stops the run (`DivergedError`) at the step it appears, with the last good
checkpoint kept and nothing non-finite saved or exported; Ctrl-C finishes (or discards) the checkpoint being written;
a workdir whose metrics would be lost (records but no checkpoint) is started over only with --force.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from iimagen import checkpoint as ckpt_lib
from iimagen import diffusion
from iimagen.configs import CONFIGS, DTYPES, ConfigError, ModelConfig, get_config
from iimagen.model import GROWABLE, InstructImagen, grow
from iimagen.tasks import STAGE2_MIXTURE, check_mixture


class TrainError(ValueError):
    """A training run cannot start as asked; the message names the option and the fix."""


class DivergedError(TrainError):
    """The loss, the gradient norm or a weight became NaN/inf; the message names the step and the likely cause."""


# Per-stage defaults for the kit's small models; the paper's (2.76 B params, batch 512) are in the comments.
STAGE_DEFAULTS = {
    0: dict(steps=4000, lr=1e-3, warmup=200),   # paper: the pre-trained Imagen
    1: dict(steps=3000, lr=5e-4, warmup=100),   # paper: 500k steps, lr 1e-4, 10k warm-up
    2: dict(steps=4000, lr=5e-4, warmup=100),   # paper: 400k steps, lr 1e-4
}


@dataclasses.dataclass
class TrainConfig:
    """One training run. `iimagen train --help` lists the same fields as options."""

    config: str = "tiny"               # model config name (iimagen.configs)
    override: str = ""                 # model config changes, "channels=16,blocks_per_level=1" (stage 0)
    stage: int = 0                     # 0: text-to-image, 1: retrieval-augmented, 2: instruction tuning
    workdir: str = "runs/tiny-stage0"
    init: str | None = None            # workdir or exported checkpoint to start from (stage 1 and 2)
    variant: str = "instruct"          # instruct | no_instruction | single_task=<task>
    mixture: str = ""                  # stage 2: "subject=0.8,edge_to_image=0" changes Table 1's weights (renormalised)
    names: str = "nonce"               # stages 1-2: "nonce" subject names per example, or the "world"'s own names
    steps: int | None = None           # None: STAGE_DEFAULTS[stage]
    batch_size: int = 64               # global batch, split over devices and hosts
    lr: float | None = None
    warmup: int | None = None
    optimizer: str = "adafactor"       # adafactor (paper) | adamw
    clip: float = 1.0                  # global gradient-norm clip
    ctx_lr_scale: float = 1.0          # the context branch's updates x this (kit's addition; paper: 1, one LR)
    ema: float = 0.999                 # paper: 0.9999 over 500k steps; short runs need a shorter memory
    dtype: str | None = None           # compute dtype override: float32 | bfloat16
    seed: int = 0
    fsdp: bool = False                 # shard parameters and optimizer state over the data axis
    log_every: int = 20
    ckpt_every: int = 500
    keep: int = 2
    sample_every: int = 0              # 0: no sample grids during training
    time_budget: float | None = None   # seconds; stop (and checkpoint) at the earlier of steps / time
    pool_size: int = 4096              # stage 1: images in the retrieval pool that clusters are mined from
    ref_drop: float = 0.0              # stage 2: P(one reference masked out), what per-reference guidance asks (kit)
    workers: int | None = None         # data worker processes (None: one per core, up to 16; 0: a thread)
    export_dtype: str = "float32"      # weights of workdir/export: float32 | bfloat16 (half the size)
    force: bool = False                # start over in a workdir whose metrics would be lost (records, no checkpoint)

    def resolved(self) -> "TrainConfig":
        """This config with the stage's defaults filled in, every field checked (nothing is created or compiled)."""
        d = STAGE_DEFAULTS.get(self.stage) if isinstance(self.stage, int) and not isinstance(self.stage, bool) else None
        if d is None:
            raise TrainError(f"--stage {self.stage} is not a stage; use 0 (text-to-image), 1 (retrieval) or 2 (instructions)")
        out = dataclasses.replace(self)
        for k in ("steps", "lr", "warmup"):
            if getattr(out, k) is None:
                setattr(out, k, d[k])
        out.check_ranges()
        if out.names not in ("nonce", "world"):
            raise TrainError(f"--names {out.names!r}: use nonce (a made-up subject name per example, style "
                             f"references unnamed) or world (the subjects' and styles' own names)")
        if out.optimizer not in ("adafactor", "adamw"):
            raise TrainError(f"--optimizer {out.optimizer!r}: use adafactor or adamw")
        if not out.ctx_lr_scale > 0:
            raise TrainError(f"--ctx-lr-scale {out.ctx_lr_scale}: give a positive multiple of --lr (1: one learning "
                             f"rate for every weight, as the paper)")
        if out.stage == 0 and out.variant != "instruct":
            raise TrainError("--variant applies to stage 2; stage 0 is plain text-to-image")
        if out.ref_drop and out.stage != 2:
            raise TrainError(f"--ref-drop {out.ref_drop} applies to stage 2 (stage 1 has the paper's own dropout); "
                             f"drop it for stage {out.stage}")
        if out.mixture:
            if out.stage != 2:
                raise TrainError(f"--mixture applies to stage 2 (the instruction-tuning mixture); drop it for stage "
                                 f"{out.stage}")
            if out.variant.startswith("single_task="):
                raise TrainError(f"--mixture and --variant {out.variant} conflict: a single-task run has no mixture; "
                                 f"use one of them")
            mixture_weights(out.mixture)  # a bad name or weight fails here, before any compile
        if out.variant != "instruct":
            from iimagen.data import parse_variant

            try:
                parse_variant(out.variant)
            except ValueError as e:
                raise TrainError(f"--variant {out.variant!r}: use instruct, no_instruction or single_task=<task> "
                                 f"({e})") from None
        if out.config not in CONFIGS:
            raise TrainError(f"--config {out.config!r}: use one of {', '.join(CONFIGS)}")
        added = parse_overrides(out.override)
        if out.stage == 0:
            try:
                get_config(out.config, use_context=False, **added, **({"dtype": out.dtype} if out.dtype else {}))
            except ValueError as e:
                raise TrainError(f"--override {out.override!r}: {e}") from None
        else:
            settable = [k for k in GROWABLE if k != "use_context"] + ["ctx_query_pos"]
            if set(added) - set(settable):
                raise TrainError(f"--override {out.override!r}: stage {out.stage} keeps the --init model's layout; "
                                 "only " + ", ".join(f"{k}=true|false" for k in settable) + " can be set (parts added "
                                 "at identity; ctx_query_pos when the context branch is attached)")
            for k, v in added.items():
                if not isinstance(v, bool):
                    raise TrainError(f"--override {k}={v}: give {k}=true or {k}=false")
        return out

    def check_paths(self):
        """--init names a folder (stages 1-2), and --workdir is, or can be made, a writable folder."""
        from iimagen.paths import check_output

        if self.stage > 0:
            if not self.init:
                raise TrainError(f"stage {self.stage} starts from an earlier stage: pass --init WORKDIR_OR_CHECKPOINT "
                                 f"(stage 1 from a stage-0 run, stage 2 from a stage-1 run)")
            if not Path(self.init).exists():
                raise TrainError(f"--init {self.init}: no such folder; give a training workdir or an exported "
                                 "checkpoint (WORKDIR/export)")
        try:
            check_output(self.workdir, option="--workdir")
        except ValueError as e:
            raise TrainError(str(e)) from None

    def check_ranges(self):
        """Every numeric and named field in its range (None allowed where the field says so)."""
        def need(ok: bool, field: str, what: str):
            if not ok:
                flag = "--" + field.replace("_", "-")
                raise TrainError(f"{flag} {getattr(self, field)!r}: {what}")

        def num(v, lo=-math.inf, hi=math.inf, integer=False) -> bool:
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                return False
            if integer and not float(v).is_integer():
                return False
            return math.isfinite(v) and lo <= v <= hi

        need(num(self.steps, 1, integer=True), "steps", "give the number of training steps, an integer >= 1")
        need(num(self.batch_size, 1, integer=True), "batch_size", "give a global batch size >= 1")
        need(num(self.lr, 0, 1.0) and self.lr > 0, "lr", "give a finite learning rate in (0, 1] (the stage "
             "defaults are 1e-3 / 5e-4; a larger one diverges)")
        need(num(self.warmup, 0, integer=True), "warmup", "give warm-up steps, an integer >= 0")
        need(num(self.clip, 0) and self.clip > 0, "clip", "give a finite gradient-norm clip > 0 (default 1.0)")
        need(num(self.ctx_lr_scale, 0) and self.ctx_lr_scale > 0, "ctx_lr_scale",
             "give a positive multiple of --lr (1: one learning rate for every weight, as the paper)")
        need(num(self.ema, 0, 1) and self.ema < 1, "ema", "give an EMA decay in [0, 1), e.g. 0.999")
        need(self.dtype is None or self.dtype in DTYPES, "dtype", f"use one of {', '.join(DTYPES)}")
        need(num(self.seed, 0, integer=True), "seed", "give an integer >= 0")
        for f in ("log_every", "ckpt_every", "keep"):
            need(num(getattr(self, f), 1, integer=True), f, "give an integer >= 1 (--keep 1 keeps the latest "
                 "checkpoint, which resuming needs)" if f == "keep" else "give an integer >= 1")
        need(num(self.sample_every, 0, integer=True), "sample_every", "give an integer >= 0 (0: no sample grids)")
        need(self.time_budget is None or num(self.time_budget, 0) and self.time_budget > 0, "time_budget",
             "give seconds > 0, or leave it out")
        need(num(self.pool_size, 8, integer=True), "pool_size", "give at least 8 pool images (default 4096)")
        need(num(self.ref_drop, 0, 1), "ref_drop", "give a probability in [0, 1] (default 0: no reference dropped)")
        need(self.workers is None or num(self.workers, 0, integer=True), "workers", "give an integer >= 0")
        need(self.export_dtype in ckpt_lib.PARAMS_DTYPES, "export_dtype",
             f"use one of {', '.join(ckpt_lib.PARAMS_DTYPES)}")
        need(isinstance(self.workdir, (str, os.PathLike)) and str(self.workdir).strip() != "", "workdir",
             "give a folder for checkpoints, metrics and the export")


def mixture_weights(text: str) -> dict | None:
    """"subject=0.8,edge_to_image=0" -> Table 1's stage-2 mixture (`tasks.STAGE2_MIXTURE`) with those sources'
    weights changed, renormalised to sum 1 ("" -> None: Table 1 as it is). A weight of 0 drops a source."""
    if not text:
        return None
    weights = dict(STAGE2_MIXTURE)
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or name not in STAGE2_MIXTURE:
            raise TrainError(f"--mixture {item!r}: write SOURCE=WEIGHT with a source of Table 1 "
                             f"({', '.join(STAGE2_MIXTURE)}), e.g. subject=0.8")
        try:
            weights[name] = float(value)
        except ValueError:
            raise TrainError(f"--mixture {item!r}: the weight must be a number, e.g. {name}=0.5") from None
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise TrainError(f"--mixture {text!r}: weights must be >= 0 and leave some source above 0")
    return check_mixture({k: w for k, w in weights.items() if w > 0})  # renormalised as the loader's own check does


# ----------------------------------------------------------------------------------------------------------------
# Model and optimizer
# ----------------------------------------------------------------------------------------------------------------
def build_model(tc: TrainConfig) -> InstructImagen:
    """The model a stage starts from: fresh (stage 0), or `--init` with the context branch attached at identity."""
    overrides = {"dtype": tc.dtype} if tc.dtype else {}
    if tc.stage == 0:
        overrides.update(parse_overrides(tc.override))
        if tc.init:
            raise TrainError("stage 0 starts from scratch; drop --init (or use --stage 1/2 to fine-tune)")
        return create_model(get_config(tc.config, use_context=False, **overrides), tc.seed)
    # Stages 1 and 2 keep the weights' layout; the only change is adding parts that start at identity (the override's
    # fields were checked by TrainConfig.resolved).
    settable = [k for k in GROWABLE if k != "use_context"]  # stages 1 and 2 always have the context branch
    added = parse_overrides(tc.override)
    model, _, meta = load_any(tc.init)
    if model.cfg.name != tc.config:
        raise TrainError(f"--init {tc.init} holds a {model.cfg.name!r} model but --config is {tc.config!r}; "
                         f"use --config {model.cfg.name} or another --init")
    default = get_config(tc.config)
    # From stage 0: the context branch, at identity, laid out as the config (or --override) says. Each part the
    # config (or --override) switches on and --init lacks (the input skip), at identity.
    changes = {}
    if not model.cfg.use_context:
        changes = {"use_context": True, "ctx_query_pos": bool(added.get("ctx_query_pos", default.ctx_query_pos))}
    elif "ctx_query_pos" in added and bool(added["ctx_query_pos"]) != model.cfg.ctx_query_pos:
        raise TrainError(f"--override ctx_query_pos={added['ctx_query_pos']}: --init {tc.init} already has its "
                         f"context branch (ctx_query_pos={model.cfg.ctx_query_pos}); it is chosen when the branch is "
                         "attached, so train stage 1 again from stage 0 with it, or drop the override")
    changes.update({k: True for k in settable if added.get(k, getattr(default, k)) and not getattr(model.cfg, k)})
    if changes:
        model = grow(model, rngs=nnx.Rngs(tc.seed + 1), **changes)
    if overrides:
        model.cfg = dataclasses.replace(model.cfg, **overrides)  # compute dtype only; weights unchanged
    return model


def create_model(cfg: ModelConfig, seed: int) -> InstructImagen:
    """A freshly initialised model, its initialisers compiled as one XLA program (eager init compiles each one)."""
    return nnx.jit(lambda: InstructImagen(cfg, rngs=nnx.Rngs(seed)))()


def parse_overrides(text: str) -> dict:
    """"channels=16,channel_mult=1:2" -> {"channels": 16, "channel_mult": (1, 2)} (numbers, bools, ':'-tuples)."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        if "=" not in item:
            raise TrainError(f"--override {item!r}: write FIELD=VALUE, e.g. channels=16")
        k, v = (x.strip() for x in item.split("=", 1))
        conv = lambda x: (x == "true") if x in ("true", "false") else (float(x) if "." in x else int(x)) \
            if x.lstrip("-").replace(".", "", 1).isdigit() else x
        out[k] = tuple(conv(x) for x in v.split(":")) if ":" in v else conv(v)
    return out


def load_any(path: str):
    """(model, tokenizer, meta) from an exported checkpoint folder, or a training workdir: its export if the run has
    finished, else the EMA weights of its latest checkpoint (to look at a run while it trains). A run resumed with a
    larger --steps keeps its old export until it ends: a checkpoint past the export's step wins."""
    p = Path(path)
    if (p / "export").is_dir():
        ckpts = [int(d.name) for d in (p / "checkpoints").glob("*") if d.name.isdigit()]  # orbax tmp dirs skipped
        exported = ckpt_lib.read_config(p / "export")[1].get("steps", 0)
        if max(ckpts, default=0) > exported:
            return load_latest_ema(p)
        return ckpt_lib.load_model(p / "export")
    if (p / "checkpoints").is_dir() and not (p / "config.json").exists():
        return load_latest_ema(p)
    return ckpt_lib.load_model(p)


def load_latest_ema(workdir, step: int | None = None) -> tuple:
    """(model, tokenizer, meta): the EMA weights of the latest checkpoint in a training workdir (of checkpoint `step`,
    one the run kept, when given: a learning curve reads them one by one)."""
    import orbax.checkpoint as ocp

    from iimagen.tokenizer import load_tokenizer

    mngr = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints")
    if step is not None and step not in mngr.all_steps():
        raise TrainError(f"{workdir} holds no checkpoint {step} (kept: {sorted(mngr.all_steps())}); give one of "
                         f"them, or train with a larger --keep to keep more")
    step = mngr.latest_step() if step is None else int(step)
    if step is None:
        raise TrainError(f"{workdir} holds no checkpoint yet; wait for --ckpt-every steps, or give an export folder")
    try:
        meta = read_meta(mngr, step)
    except Exception as e:  # noqa: BLE001
        raise damaged(mngr, step, e) from None
    cfg = ModelConfig.from_dict(meta["model"])
    graphdef, params = nnx.split(nnx.eval_shape(lambda: InstructImagen(cfg, nnx.Rngs(0))), nnx.Param)
    flat, treedef = jax.tree_util.tree_flatten(params)
    names = meta["leaf_names"]
    ema = [f"{i:05d}" for i, n in enumerate(names) if n.startswith("['ema']")]
    if len(ema) != len(flat):
        raise TrainError(f"{workdir}: the checkpoint's EMA has {len(ema)} arrays but a {cfg.name!r} model has "
                         f"{len(flat)}; the workdir was written by another version of the kit")
    # Read the EMA leaves only (a partial restore: parameters and optimizer state stay on disk).
    only = ocp.args.PyTreeRestore(item={k: 0 for k in ema}, partial_restore=True,
                                  restore_args={k: ocp.RestoreArgs(restore_type=np.ndarray) for k in ema})
    try:
        part = mngr.restore(step, args=ocp.args.Composite(state=only))["state"]
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types for a damaged folder
        raise damaged(mngr, step, e) from None
    model = nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, [jnp.asarray(part[k]) for k in ema]))
    return model, load_tokenizer(), {**meta["train"], "steps": int(step), "from_checkpoint": True}


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Adafactor as in the paper (β1 = 0.9, factored second moments), constant LR after a linear warm-up."""
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, tc.lr, max(tc.warmup, 1)), optax.constant_schedule(tc.lr)], [max(tc.warmup, 1)])
    if tc.optimizer == "adafactor":
        opt = optax.adafactor(sched, momentum=0.9, multiply_by_parameter_scale=False)
    else:
        opt = optax.adamw(sched, b1=0.9, b2=0.999, weight_decay=0.0)
    parts = [optax.clip_by_global_norm(tc.clip), opt]
    if tc.ctx_lr_scale != 1.0:
        # The context reader starts at identity and, in a short run, barely leaves it; its updates can be scaled apart
        # from the backbone's. With two readers only the position-free one is scaled: scaling the whole branch (the
        # aligned reader and the position codes too) erased the alignment the aligned reader is born with
        # (docs/experiments/2026-12-07-ctx-lr-scale-and-alignment.md).
        parts.append(optax.masked(optax.scale(tc.ctx_lr_scale), context_branch_mask))
    return optax.chain(*parts)


def context_branch_mask(params):
    """The weights `--ctx-lr-scale` scales: the position-free context reader's (paths through `ctx_content`) when the
    model has one, else the whole context branch's (any path through a `ctx_*` attribute)."""
    keys = lambda path: [str(getattr(k, "key", "")) for k in path]  # noqa: E731
    paths = [keys(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    prefix = "ctx_content" if any("ctx_content" in p for p in paths) else "ctx_"
    return jax.tree_util.tree_map_with_path(lambda path, _: any(k.startswith(prefix) for k in keys(path)), params)


# ----------------------------------------------------------------------------------------------------------------
# Devices: one code path for 1 to N devices
# ----------------------------------------------------------------------------------------------------------------
def make_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def param_sharding(mesh: Mesh, x, fsdp: bool) -> NamedSharding:
    """Replicated, or (fsdp) split on the largest axis that the data axis divides."""
    n = mesh.shape["data"]
    if fsdp and n > 1 and getattr(x, "ndim", 0) >= 1 and x.size >= 4096:
        axes = sorted(range(x.ndim), key=lambda a: -x.shape[a])
        for a in axes:
            if x.shape[a] % n == 0:
                spec = [None] * x.ndim
                spec[a] = "data"
                return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())


def shard_batch(mesh: Mesh, local: dict) -> dict:
    """Each host's local batch -> one global array per key, split over the data axis."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


# ----------------------------------------------------------------------------------------------------------------
# The train step
# ----------------------------------------------------------------------------------------------------------------
def abstract_batch(mesh: Mesh, cfg: ModelConfig, batch_size: int) -> dict:
    """The global batch's shapes and shardings (docs/contracts.md), to compile the step before any data exist."""
    R, K, sh = cfg.resolution, cfg.K, NamedSharding(mesh, P("data"))
    shapes = {"image": ((batch_size, R, R, 3), jnp.float32), "text_ids": ((batch_size, cfg.text_len), jnp.int32),
              "ctx_image": ((batch_size, K, R, R, 3), jnp.float32),
              "ctx_ids": ((batch_size, K, cfg.ctx_text_len), jnp.int32), "ctx_mask": ((batch_size, K), jnp.bool_),
              "task_id": ((batch_size,), jnp.int32)}
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sh) for k, (s, d) in shapes.items()}


def make_train_step(graphdef, tx, tc: TrainConfig, n_tasks: int):
    base_key = jax.random.key(tc.seed)

    def loss_fn(params, batch, rng, capacity):
        model = nnx.merge(graphdef, params)
        if not model.cfg.use_context:  # stage 0: the text-to-image backbone has no context branch
            batch = {k: batch[k] for k in ("image", "text_ids")}
        # v-prediction, L2 (paper App. A.2.2)
        return diffusion.diffusion_loss(model, batch, rng, ctx_capacity=capacity)

    def train_step(state, batch, capacity=None):
        """`capacity` (static): encode only that many context slots (`context_capacity`); None: all B*K."""
        params, ema, opt_state, step = state["params"], state["ema"], state["opt"], state["step"]
        rng = jax.random.fold_in(base_key, step)  # deterministic in (seed, step): resume sees the same noise
        (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, capacity)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # EMA with a warm-up (as in many diffusion codebases) so short runs also get a useful average.
        decay = jnp.minimum(tc.ema, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        task = batch["task_id"]
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        finite = finite & jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": finite,  # loss, gradient and every new weight: checked by the loop before anything is saved
            "task_loss_sum": jax.ops.segment_sum(per_example, task, n_tasks),
            "task_count": jax.ops.segment_sum(jnp.ones_like(per_example), task, n_tasks),
        }
        return {"params": params, "ema": ema, "opt": opt_state, "step": step + 1}, metrics

    return train_step


def init_state(params, tx, mesh: Mesh, fsdp: bool) -> dict:
    """The train state {params, ema, opt, step}, every leaf placed on the mesh: replicated, or fsdp-split
    (`param_sharding`); the EMA starts as a copy of the parameters.

    The state holds plain nested dicts of arrays (`nnx.to_pure_dict`), not nnx Variables: the jitted step flattens its
    input and rebuilds its output on every call, and for `tiny`'s 1,528 leaves wrapped in Variables that took about
    20-40 ms of Python per step, on a CPU whose cores the step itself needs."""
    shard = lambda x: jax.device_put(x, param_sharding(mesh, x, fsdp))  # noqa: E731
    params = jax.tree.map(shard, nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params)
    return {"params": params, "ema": jax.tree.map(jnp.copy, params),
            "opt": jax.tree.map(shard, jax.jit(tx.init)(params)), "step": shard(jnp.zeros((), jnp.int32))}


def jit_train_step(train_step, state: dict, mesh: Mesh, donate: bool = True):
    """`train_step` under jit with the state's layout pinned: each output leaf is placed as its input was, so every
    step runs the first step's program. Left to XLA's sharding propagation, some small leaves that fsdp replicates came
    back split over the data axis, and the compiled step refused its own output at step 2. Metrics are replicated."""
    layout = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(train_step, out_shardings=(layout, NamedSharding(mesh, P())), donate_argnums=(0,) if donate else (),
                   static_argnums=(2,))


def context_capacity(ctx_mask, batch_size: int, K: int) -> int | None:
    """How many context slots the train step encodes for a batch with this `ctx_mask` [B, K]: the used slots rounded
    up to a multiple of B/2 (so a run compiles a few programs, not one per count), or None (all B*K) when that is no
    fewer. A stage-2 batch of 32 uses 28-45 of its 96 slots: the step encodes 32 or 48 images instead of 96."""
    n, q = batch_size * K, max(1, batch_size // 2)
    c = q * -(-max(int(np.asarray(ctx_mask).sum()), 1) // q)
    return None if c >= n else c


def context_text_len(ctx_ids, limit: int) -> int:
    """The context texts' length the step needs: their longest (pads are trailing zeros, masked everywhere, so the
    cut changes no output) rounded up to a multiple of 8, at most `limit`. A context text is `[ref#k]` and a few
    words, 3-6 of its 32 tokens: the step encodes 8."""
    ids = np.asarray(ctx_ids)
    last = int(np.max(np.nonzero(ids.reshape(-1, ids.shape[-1]))[1], initial=-1)) + 1
    return min(limit, 8 * -(-max(last, 1) // 8))


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: the whole train state as numbered leaves (nothing pickled), checked against the model on restore
# ----------------------------------------------------------------------------------------------------------------
def _leaves(state) -> tuple[dict, list]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    # Names without the `.value` that states of nnx Variables (kept before 2026-12-08) added: those runs still resume.
    names = [jax.tree_util.keystr(p).removesuffix(".value") for p, _ in flat]
    return {f"{i:05d}": v for i, (_, v) in enumerate(flat)}, names


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d))


def save_state(mngr, state, meta: dict):
    import orbax.checkpoint as ocp

    leaves, names = _leaves(state)
    step = int(jax.device_get(state["step"]))
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                            meta=ocp.args.JsonSave({**meta, "leaf_names": names})))


def damaged(mngr, step: int, err: Exception) -> TrainError:
    """The error for a training checkpoint that cannot be read: which folder, and how to go on without it."""
    folder = Path(mngr.directory) / str(step)
    return TrainError(f"checkpoint {folder} cannot be read, it is damaged or incomplete ({type(err).__name__}: "
                      f"{' '.join(str(err).split())[:200]}); move that folder away to resume from the checkpoint "
                      "before it, or start a new --workdir")


def read_meta(mngr, step: int) -> dict:
    """The JSON meta saved beside checkpoint `step` by `save_state` (train and model config, leaf names, wall_s)."""
    import orbax.checkpoint as ocp

    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def same_config(stored: dict | None, cfg: ModelConfig) -> bool:
    """Whether a checkpoint's stored model config (its JSON) is `cfg`. A retired switch stored off (a run begun before
    it was retired) still matches."""
    try:
        stored = _jsonable(dataclasses.asdict(ModelConfig.from_dict(dict(stored or {}))))
    except (ConfigError, TypeError):  # an unknown field, or a retired switch stored on: another config
        return False
    return stored == _jsonable(dataclasses.asdict(cfg))


def restore_state(mngr, template, tc: TrainConfig, cfg: ModelConfig):
    """The latest checkpoint in the workdir, laid into `template`'s structure (and shardings)."""
    import orbax.checkpoint as ocp

    step = mngr.latest_step()
    try:
        meta = read_meta(mngr, step)
    except Exception as e:  # noqa: BLE001
        raise damaged(mngr, step, e) from None
    leaves, names = _leaves(template)
    stored = [n.removesuffix(".value") for n in meta.get("leaf_names", [])]
    if not same_config(meta.get("model"), cfg) or names != stored:
        raise TrainError(
            f"the checkpoint in {tc.workdir} was written by another config ({meta.get('model', {}).get('name')!r}, "
            f"stage {meta.get('train', {}).get('stage')}); use the same --config/--stage/--variant, or a new --workdir")
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in leaves.items()}
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types for a damaged folder
        raise damaged(mngr, step, e) from None
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, [restored[k] for k in sorted(restored)]), meta


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------
def train(tc: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) one training run; returns a summary. Metrics go to `workdir/metrics.jsonl`.

    Raises `TrainError` for a bad option (before anything is created or compiled) and `DivergedError` when the loss,
    the gradient norm or a weight becomes non-finite (the last good checkpoint is kept; nothing is exported)."""
    tc = tc.resolved()
    tc.check_paths()
    workdir = Path(tc.workdir).absolute()
    mesh = make_mesh()
    if tc.batch_size % mesh.size:
        raise TrainError(f"--batch-size {tc.batch_size} must be a multiple of the {mesh.size} devices")
    has_ckpt = any(d.name.isdigit() for d in (workdir / "checkpoints").glob("*"))
    records = len(Path(workdir, "metrics.jsonl").read_text().splitlines()) if (workdir / "metrics.jsonl").is_file() else 0
    if records and not has_ckpt and not tc.force:
        raise TrainError(f"--workdir {workdir} holds {records} metric records but no checkpoint, so this run would "
                         "start at step 0 and replace them; pass --force to start over, or choose a new --workdir")
    created = not workdir.exists()
    try:
        return _train(tc, workdir, mesh, progress)
    except BaseException:
        if created:  # a run that failed before its first checkpoint leaves no empty folder behind (its metrics stay)
            for sub in ("checkpoints", ""):
                d = workdir / sub
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        raise


def _train(tc: TrainConfig, workdir: Path, mesh: Mesh, progress: bool) -> dict:
    import orbax.checkpoint as ocp
    from tqdm.auto import tqdm

    from iimagen.data import Loader
    from iimagen.tasks import TASK_NAMES

    n_proc = jax.process_count()
    # ==== Model, optimizer, state ====
    model = build_model(tc)
    cfg = model.cfg
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(tc)
    state = init_state(params, tx, mesh, tc.fsdp)

    workdir.mkdir(parents=True, exist_ok=True)
    mngr = ocp.CheckpointManager(workdir / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=tc.keep, create=True))
    meta = {"train": dataclasses.asdict(tc), "model": dataclasses.asdict(cfg)}
    old, wall_before = None, 0.0  # the resumed checkpoint's meta; training time of the earlier runs it holds
    if mngr.latest_step() is not None:
        state, old = restore_state(mngr, state, tc, cfg)
        wall_before = float(old.get("wall_s", 0.0))
    start = int(jax.device_get(state["step"]))
    drop_lost_records(workdir, start)

    # Without packing, compile before the data workers start: on a GPU host they would otherwise take the CPU cores XLA
    # compiles on (an H200 host: a 44 s compile stretched past a 70 s budget). No compile spends the time budget.
    jitted = jit_train_step(make_train_step(graphdef, tx, tc, len(TASK_NAMES)), state, mesh)
    abstract = abstract_batch(mesh, cfg, tc.batch_size)
    # Empty context slots and the context texts' pads are skipped (`context_capacity`, `context_text_len`) on one
    # device; with the batch split over several, every slot is encoded (a gather across devices costs more).
    packing = cfg.use_context and mesh.size == 1
    programs, compile_s = {}, [0.0]

    def program(capacity, text_len):
        """The compiled step for this capacity and context-text length (a handful per run; the persistent compile
        cache keeps them)."""
        if (capacity, text_len) not in programs:
            t = time.time()
            shapes = {**abstract, "ctx_ids": jax.ShapeDtypeStruct(abstract["ctx_ids"].shape[:2] + (text_len,),
                                                                  jnp.int32, sharding=abstract["ctx_ids"].sharding)}
            programs[capacity, text_len] = jitted.lower(state, shapes, capacity).compile()
            compile_s[0] += time.time() - t
        return programs[capacity, text_len]

    if not packing:  # with packing, the first batch's program is compiled when that batch comes (off the budget)
        program(None, cfg.ctx_text_len)

    # ==== Data: deterministic in (seed, step), this host's shard ====
    loader = Loader(stage=tc.stage, batch_size=tc.batch_size // n_proc, resolution=cfg.resolution, seed=tc.seed,
                    K=cfg.K, start_step=start,
                    variant=None if tc.variant == "instruct" else tc.variant, mixture=mixture_weights(tc.mixture),
                    pool_size=tc.pool_size, ref_drop=tc.ref_drop,
                    workers=tc.workers, anonymous=tc.names == "nonce")

    meta["data_fingerprint"] = loader.fingerprint()
    check_data(meta["data_fingerprint"], old, start)

    # ==== Loop ====
    log = open(workdir / "metrics.jsonl", "a")
    t0, t_last, seen_last = time.time(), time.time(), start
    if tc.time_budget:  # the budget binds, not --steps: the bar counts its seconds (and the steps done beside them)
        bar = tqdm(total=round(tc.time_budget), desc=f"stage {tc.stage} {tc.config}, time budget",
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s{postfix}", disable=not progress)
    else:
        bar = tqdm(total=tc.steps, initial=start, desc=f"stage {tc.stage} {tc.config}", disable=not progress)
    step = done = start
    stopped_early = False
    # Dispatch is asynchronous: without a wait the loop would queue up every prefetched batch and overrun
    # --time-budget by as many steps (a 6 s budget took 161 s on a loaded CPU). It waits for the previous step, so one
    # step stays queued and the device never waits for the host. The previous step's finiteness is read then (it is
    # ready, so that costs no wait); the current step's is read before anything is logged, saved or exported.
    in_flight, metrics = None, None
    interrupted = []
    with stop_on_sigint(interrupted):
        try:
            for step, batch in loader:
                if step >= tc.steps or interrupted:
                    break
                capacity, text_len = None, cfg.ctx_text_len
                if packing:  # the used context slots only, their texts without the trailing pads
                    capacity = context_capacity(batch["ctx_mask"], tc.batch_size, cfg.K)
                    text_len = context_text_len(batch["ctx_ids"], cfg.ctx_text_len)
                    batch = {**batch, "ctx_ids": batch["ctx_ids"][..., :text_len]}
                late = compile_s[0]
                state, metrics = program(capacity, text_len)(state, shard_batch(mesh, batch))
                late = compile_s[0] - late  # a program compiled mid-run spends neither the budget nor the rate
                t0, t_last = t0 + late, t_last + late
                if in_flight is not None:
                    check_finite(in_flight, done, tc, mngr)
                in_flight = metrics
                done = step + 1
                if done % tc.log_every == 0 or done == tc.steps:
                    m = jax.device_get(metrics)
                    check_finite(m, done, tc, mngr)
                    now = time.time()
                    rec = {"step": done, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                           "images_per_s": (done - seen_last) * tc.batch_size / max(now - t_last, 1e-9),
                           "step_time_s": (now - t_last) / max(done - seen_last, 1)}
                    cnt = m["task_count"]
                    rec["task_loss"] = {TASK_NAMES[i]: float(m["task_loss_sum"][i] / cnt[i])
                                        for i in range(len(cnt)) if cnt[i]}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    bar.set_postfix(step=done, loss=f"{rec['loss']:.4f}", ips=f"{rec['images_per_s']:.0f}")
                    t_last, seen_last = now, done
                bar.update(min(time.time() - t0, bar.total) - bar.n if tc.time_budget else 1)
                if done % tc.ckpt_every == 0:
                    check_finite(metrics, done, tc, mngr)
                    save_state(mngr, state, {**meta, "wall_s": wall_before + time.time() - t0})
                if tc.time_budget and time.time() - t0 > tc.time_budget:
                    stopped_early = True
                    break
            if metrics is not None:
                check_finite(metrics, done, tc, mngr)
        finally:
            bar.close()
            loader.close()
            log.close()
            mngr.wait_until_finished()  # the checkpoint being written is completed (an unfinished one is never read)
    if interrupted:
        raise KeyboardInterrupt(f"training stopped at step {done}; the latest checkpoint is step "
                                f"{mngr.latest_step()}: run the same command to resume from it")
    final = int(jax.device_get(state["step"]))
    wall = time.time() - t0
    if mngr.latest_step() != final:
        save_state(mngr, state, {**meta, "wall_s": wall_before + wall})
    mngr.wait_until_finished()
    export(workdir, graphdef, state, tc, cfg, wall=wall_before + wall)
    return {"workdir": str(workdir), "steps": final, "wall_s": wall, "total_wall_s": wall_before + wall,
            "compile_s": compile_s[0], "stopped_early": stopped_early}


class stop_on_sigint:
    """While the loop runs, Ctrl-C (SIGINT) appends to `flag` instead of raising, so the loop stops between steps and
    never inside an orbax save; a second Ctrl-C raises at once. Outside the main thread it does nothing."""

    def __init__(self, flag: list):
        self.flag, self.old = flag, None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag.append(signum)

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def check_finite(metrics: dict, step: int, tc: TrainConfig, mngr):
    """Raise `DivergedError` when train step `step` gave a non-finite loss, gradient norm or weight."""
    m = jax.device_get({k: metrics[k] for k in ("finite", "loss", "grad_norm")})
    if bool(m["finite"]):
        return
    loss, gn = float(m["loss"]), float(m["grad_norm"])
    what = (f"the loss is {loss}" if not math.isfinite(loss) else
            f"the gradient norm is {gn}" if not math.isfinite(gn) else "a weight became NaN/inf")
    mngr.wait_until_finished()
    last = mngr.latest_step()
    raise DivergedError(
        f"training diverged at step {step}: {what}. Likely cause: the learning rate --lr {tc.lr:g} is too high for "
        f"--optimizer {tc.optimizer} (try a tenth of it) or a longer --warmup; --clip {tc.clip:g} bounds each step's "
        "gradient. " + (f"The last good checkpoint, step {last}, is kept: run again with a lower --lr to resume from "
                        "it." if last is not None else "No checkpoint was written; nothing was exported."))


def world_version() -> str:
    """The world the data came from (`iimagen.world.VERSION`); exports made before world v2 have no record: v1."""
    from .world import VERSION

    return VERSION


def export(workdir: Path, graphdef, state, tc: TrainConfig, cfg: ModelConfig, wall: float | None = None):
    """Write `workdir/export`: the EMA weights as a Generator checkpoint (see iimagen.checkpoint)."""
    model = nnx.merge(graphdef, jax.device_get(state["ema"]))
    meta = {"stage": tc.stage, "variant": tc.variant, "steps": int(jax.device_get(state["step"])),
            "seed": tc.seed, "batch_size": tc.batch_size, "lr": tc.lr, "optimizer": tc.optimizer,
            "init": tc.init, "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "wall_s": wall, "command": "iimagen train " + " ".join(_argv_of(tc)), "world": world_version()}
    if jax.process_index() == 0:
        ckpt_lib.save_model(Path(workdir) / "export", model, meta, dtype=tc.export_dtype, overwrite=True)


class DataChangedWarning(UserWarning):
    """A resumed run gets other batches than the run that wrote its checkpoint."""


def check_data(fingerprint: str, old_meta: dict | None, step: int):
    """Warn when a resumed run's data differ from those its checkpoint was trained on (`Loader.fingerprint`): the
    kit's data changed since the run began (a newer version), or --seed / --names / --pool-size differ. Training
    goes on from the checkpoint, on the new data; resume with the version and options that began the run to keep
    the old batches."""
    import warnings

    if old_meta is None:
        return
    was = old_meta.get("data_fingerprint")
    if was == fingerprint:
        return
    why = ("its checkpoint predates data fingerprints, so the batches may differ" if was is None else
           f"data fingerprint {fingerprint} differs from the checkpoint's {was}")
    warnings.warn(f"resuming at step {step}: {why}. The kit's data changed since the run began, or --seed / --names "
                  f"/ --pool-size differ from its first command; training continues on the new data. To keep the "
                  f"run's batches, resume with the kit version and options that began it.", DataChangedWarning,
                  stacklevel=2)


def drop_lost_records(workdir, step: int) -> int:
    """Remove the metrics records past `step` (the checkpoint a run resumes from): they were logged by a segment that
    was killed after its last checkpoint, and the resumed run logs those steps again (or, with a smaller --steps,
    never reaches them). Returns how many were dropped."""
    path = Path(workdir, "metrics.jsonl")
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    keep = [x for x in lines if _record(x) is not None and _record(x)["step"] <= step]  # a half-written line: dropped
    if len(keep) < len(lines):
        path.write_text("".join(x + "\n" for x in keep))
    return len(lines) - len(keep)


def _record(line: str) -> dict | None:
    try:
        r = json.loads(line)
    except ValueError:
        return None
    return r if isinstance(r, dict) and "step" in r else None


def read_metrics(workdir) -> list[dict]:
    """The metrics JSONL of a run, one dict per logged step (the last record wins for a step logged twice; a line a
    killed run left half-written is skipped)."""
    recs = {}
    for line in Path(workdir, "metrics.jsonl").read_text().splitlines():
        r = _record(line)
        if r is not None:
            recs[r["step"]] = r
    return [recs[k] for k in sorted(recs)]


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _argv_of(tc: TrainConfig) -> list[str]:
    out = []
    for f in dataclasses.fields(TrainConfig):
        v = getattr(tc, f.name)
        if v is None or v == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out


def parse_args(argv: list[str]) -> tuple[TrainConfig, bool]:
    """(TrainConfig, show a progress bar) from `iimagen train` arguments."""
    p = argparse.ArgumentParser(prog="iimagen train", description=__doc__.split("\n")[0])
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true")
        else:
            typ = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default)
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    tc = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
    tc.resolved().check_paths()  # every option checked before anything starts
    if a.distributed:
        jax.distributed.initialize()
    return tc, not a.no_progress


def cli_train(argv: list[str]) -> int:
    from iimagen.cli import fail

    try:
        tc, progress = parse_args(argv)
        summary = train(tc, progress=progress)
    except ValueError as e:  # TrainError, DivergedError, CheckpointError, ConfigError, DataError: all ValueErrors
        return fail("iimagen train", e)
    print(json.dumps(summary))
    return 0
