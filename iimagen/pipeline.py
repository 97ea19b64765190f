"""`Generator`: an exported checkpoint + multi-modal instructions -> images (paper §3, App. A.2.2).

    gen = Generator.load("data/checkpoints/tiny")                # or Generator(model, tokenizer, meta)
    images = gen.generate([instruction], sampler="dpm")          # list of uint8 [R, R, 3]

Instructions are batched `batch_size` at a time; the last batch is padded to the same static shape, so a run
compiles once per (sampler, steps, guidance structure). Every image has its own random key (seed, index), so an
image does not depend on the batch size or on its neighbours. Also `cli_sample`, the `iimagen sample` command.

Nothing silent: a model with non-finite weights is refused, an instruction whose text is longer than the model reads
is an error (never cut), and a sample that comes out NaN/inf is an error instead of a black image.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from . import diffusion
from .diffusion import Guidance


class GeneratorError(ValueError):
    """Bad input to the Generator (instruction, checkpoint, sampler options); the message names the fix."""


MAX_STEPS = diffusion.NUM_TRAIN_TIMESTEPS  # the schedule's own grid: more steps add time, not quality
# The sampling setting every entry point starts from (`Generator.generate`, `iimagen sample | eval | demo`, the
# Composer): chosen on held-out examples for the kit's undertrained models (docs/experiments/
# 2026-11-26-sampling-setting.md). The paper's recipe (App. A.2.2) is one flag away: `--paper`, `**PAPER_SAMPLING`.
SAMPLING = {"sampler": "ddim", "steps": 50, "guidance": "none", "clip": "static"}
PAPER_SAMPLING = {"sampler": "ddpm", "steps": 256, "guidance": "paper", "clip": "dynamic"}


def check_sampling(sampler: str, steps: int | None) -> int:
    """The step count for `sampler` (its default when None), checked: an integer in [1, MAX_STEPS]."""
    if sampler not in diffusion.SAMPLERS:
        raise GeneratorError(f"generate: sampler={sampler!r}; use one of {', '.join(diffusion.SAMPLERS)}")
    steps = diffusion.SAMPLERS[sampler] if steps is None else steps
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise GeneratorError(f"generate: steps={steps!r} must be an integer in [1, {MAX_STEPS}] (the schedule's "
                             f"grid; the paper samples with 256); {sampler}'s default is {diffusion.SAMPLERS[sampler]}")
    return int(steps)


def check_instructions(instructions, cfg, tokenizer) -> list:
    """`instructions` (one or a list) as a list, each an `Instruction` that a model of `cfg` can read whole: no more
    contexts than its K slots, none for a text-to-image model, texts within `text_len` / `ctx_text_len` tokens."""
    from .instruction import Instruction, InstructionError, check_fits

    if isinstance(instructions, Instruction):
        instructions = [instructions]
    if not isinstance(instructions, (list, tuple)) or not instructions:
        raise GeneratorError("generate: give an Instruction or a non-empty list of them")
    how = ("build one with iimagen.Instruction(text, [Context(image, text, kind=...)]) or load a saved one with "
           "Instruction.load(folder)")
    for i, ins in enumerate(instructions):
        if not isinstance(ins, Instruction):
            raise GeneratorError(f"generate: instructions[{i}] is a {type(ins).__name__}, not an Instruction; {how}")
        if len(ins.contexts) > cfg.K:
            raise GeneratorError(
                f"generate: instructions[{i}] has {len(ins.contexts)} contexts but this model has "
                f"K={cfg.K} context slots; drop contexts or use a model trained with K >= {len(ins.contexts)}")
        if ins.contexts and not cfg.use_context:
            raise GeneratorError(f"generate: instructions[{i}] has contexts but this is a text-to-image model "
                                 "(cfg.use_context=False); use a stage-1/2 checkpoint or remove the contexts")
        try:
            check_fits([ins], tokenizer, cfg.text_len, cfg.ctx_text_len)
        except InstructionError as e:
            raise GeneratorError(f"generate: instructions[{i}]: {str(e).split(': ', 1)[1]}") from None
    return list(instructions)


def to_uint8(x) -> np.ndarray:
    """[-1, 1] float -> uint8 [0, 255]."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


class Generator:
    """Sample images from an `InstructImagen` for `Instruction`s (see `generate`)."""

    def __init__(self, model, tokenizer, meta: dict | None = None):
        if not hasattr(model, "denoise") or not hasattr(model, "cfg"):
            raise GeneratorError(f"Generator: model is a {type(model).__name__}, not an InstructImagen; load one with "
                                 "Generator.load(checkpoint_dir)")
        if not hasattr(tokenizer, "encode"):
            raise GeneratorError("Generator: tokenizer has no encode(); use iimagen.load_tokenizer()")
        from .checkpoint import bad_weights, flat_params

        bad = bad_weights(flat_params(model))
        if bad:
            raise GeneratorError(f"Generator: the model's weights are damaged ({bad}); it would draw only black "
                                 "images: load a checkpoint from before its training diverged")
        self.model, self.tokenizer, self.meta = model, tokenizer, dict(meta or {})
        self.cfg = model.cfg

    @classmethod
    def load(cls, checkpoint_dir) -> "Generator":
        """A Generator from an exported-model folder (`iimagen.checkpoint.save_model`)."""
        from .checkpoint import load_model

        return cls(*load_model(checkpoint_dir))

    def __repr__(self):
        c = self.cfg
        return f"Generator({c.name}: {c.resolution} px, K={c.K} context slots, meta={self.meta})"

    def generate(self, instructions, sampler: str = SAMPLING["sampler"], steps: int | None = None,
                 guidance: Guidance | str | None = None, seed: int = 0, batch_size: int = 8, num_images: int = 1,
                 return_intermediates: bool = False, intermediates_every: int | None = None, progress: bool = True,
                 clip: str = SAMPLING["clip"], eta: float = 0.0, texts: list | None = None):
        """Images for `instructions` (one `Instruction` or a list), by default with the kit's setting (`SAMPLING`;
        the paper's: `generate(..., **PAPER_SAMPLING)`).

        sampler: "ddpm" (256 steps, the paper's), "ddim" (50) or "dpm" (DPM-Solver++, 20); `steps` overrides.
        guidance: a `Guidance` (`Guidance()` is the paper's oscillating w = 25, `Guidance.cfg(w)`,
        `Guidance.separate(...)`) or the command line's words ("none", "paper", a scale); None: `SAMPLING`'s.
        texts: one per instruction, the text the model reads instead of the instruction's (None: no text); the
        evaluation gives the multi-task baseline its captions this way (`tasks.no_instruction_text`).
        Returns a list of uint8 [R, R, 3] (a list of `num_images` lists when num_images > 1); with
        `return_intermediates`, also the x_0 predictions every `intermediates_every` steps (default steps // 8) per
        image, uint8 [n, R, R, 3], in the same nesting.
        """
        from tqdm.auto import tqdm

        from .instruction import batch_instructions

        instructions = check_instructions(instructions, self.cfg, self.tokenizer)
        for name, v in (("batch_size", batch_size), ("num_images", num_images), ("seed", seed)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (0 if name == "seed" else 1):
                raise GeneratorError(f"generate: {name}={v!r} must be an integer >= {0 if name == 'seed' else 1}")
        steps = check_sampling(sampler, steps)
        if not isinstance(guidance, Guidance):
            guidance = parse_guidance(SAMPLING["guidance"] if guidance is None else str(guidance))
        every = 0
        if return_intermediates:
            every = intermediates_every or max(1, int(steps) // 8)
        items = [(i, j) for i in range(len(instructions)) for j in range(num_images)]
        bs = min(batch_size, len(items))
        root = jax.random.PRNGKey(seed)
        images, inters = [None] * len(items), [None] * len(items)
        cfg = self.cfg
        for start in tqdm(range(0, len(items), bs), desc=f"{sampler} x{steps}", disable=not progress,
                          unit="batch"):
            chunk = items[start:start + bs]
            idx = list(range(start, start + len(chunk))) + [start + len(chunk) - 1] * (bs - len(chunk))  # pad
            batch = batch_instructions([instructions[items[k][0]] for k in idx], self.tokenizer, cfg.resolution,
                                       cfg.K, cfg.text_len, cfg.ctx_text_len,
                                       texts=None if texts is None else [texts[items[k][0]] for k in idx])
            keys = jax.vmap(lambda k: jax.random.fold_in(root, k))(np.asarray(idx, np.uint32))
            try:
                out = diffusion.sample(self.model, batch, keys, sampler=sampler, steps=steps, guidance=guidance,
                                       eta=eta, clip=clip, intermediates_every=every)
            except diffusion.DiffusionError as e:
                raise GeneratorError(f"generate: {e}") from None
            x, inter = out if every else (out, None)
            x = np.asarray(x)
            lost = sorted({items[start + b][0] for b in range(len(chunk)) if not np.isfinite(x[b]).all()})
            if lost:
                raise GeneratorError(
                    f"generate: sampling gave NaN/inf for instruction(s) {lost} ({sampler}, {steps} steps, "
                    f"{guidance or Guidance()}, clip={clip!r}); the weights are finite, so lower the guidance scales "
                    "or use clip='dynamic' (no image was returned rather than a black one)")
            x = to_uint8(x)
            for b in range(len(chunk)):
                images[start + b] = x[b]
                if every:
                    inters[start + b] = to_uint8(inter[:, b])
        if num_images > 1:
            images = [images[i * num_images:(i + 1) * num_images] for i in range(len(instructions))]
            inters = [inters[i * num_images:(i + 1) * num_images] for i in range(len(instructions))]
        return (images, inters) if return_intermediates else images


# ---------------------------------------------------------------------------------------------------------------------
# `iimagen sample`
# ---------------------------------------------------------------------------------------------------------------------
def parse_references(text: str | None) -> dict:
    """`--reference-guidance` words -> {i: w_i}: "1=3" guides [ref#1] at 3; "1=3,2=0.5" two references."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        i, eq, w = part.strip().removeprefix("ref#").partition("=")
        try:
            if not eq or int(i) < 1 or int(i) in out:
                raise ValueError
            out[int(i)] = float(w)
        except ValueError:
            raise GeneratorError(f"--reference-guidance {text!r}: give I=W pairs, comma-separated, with reference "
                                 "numbers I >= 1 each once, e.g. '1=3' ([ref#1] at scale 3) or '1=3,2=0.5'") from None
    return out


def parse_guidance(text: str, context: float | None = None, oscillate: bool | None = None,
                   references: str | None = None) -> Guidance:
    """A `Guidance` from the command line's words: `paper` (w = 25, oscillating), `none`, or a number w (plain CFG);
    `context` gives a separate context scale, `oscillate` turns the paper's every-other-step schedule on or off,
    `references` ("1=3,2=0.5") gives per-reference scales."""
    refs = parse_references(references)
    if text == "paper":
        osc = True if oscillate is None else oscillate
        return Guidance(25.0, context, osc, refs)
    if text == "none":
        return Guidance(1.0, context, bool(oscillate), refs)
    try:
        w = float(text)
    except ValueError:
        raise GeneratorError(f"--guidance {text!r}: give 'paper' (w=25, oscillating), 'none' or a number") from None
    return Guidance(w, context, bool(oscillate), refs)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The sampling flags of `iimagen sample`, `eval` and `demo` (one parser for all three); `sampling_args` reads
    them. Unset, they are `SAMPLING`'s; with `--paper`, `PAPER_SAMPLING`'s; a flag given beside `--paper` wins."""
    p.add_argument("--paper", action="store_true",
                   help="the paper's recipe (App. A.2.2): 256-step DDPM, oscillating w = 25, dynamic clipping")
    p.add_argument("--sampler", default=None, choices=sorted(diffusion.SAMPLERS),
                   help=f"default {SAMPLING['sampler']} ({PAPER_SAMPLING['sampler']} with --paper)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"default {SAMPLING['steps']} ({PAPER_SAMPLING['steps']} with --paper; a sampler's own "
                        f"default for another --sampler: 256 ddpm, 50 ddim, 20 dpm); at most {MAX_STEPS}")
    p.add_argument("--guidance", default=None,
                   help="'paper' (w=25, oscillating), 'none', or a scale w (default none; paper with --paper)")
    p.add_argument("--context-guidance", type=float, default=None,
                   help="separate context scale w_c (3 branches: v_u + w (v_t - v_u) + w_c (v_c - v_t))")
    p.add_argument("--reference-guidance", default=None, metavar="I=W[,I=W]",
                   help="per-reference scales, e.g. '1=3': [ref#1] at 3 (one more branch each; nothing for an "
                        "example without [ref#I] or a model without context)")
    p.add_argument("--oscillate", action=argparse.BooleanOptionalAction, default=None,
                   help="guidance on every other step (default: on for 'paper', off for a number)")
    p.add_argument("--clip", default=None, choices=list(diffusion.CLIP_MODES),
                   help="x0 thresholding while sampling: static (default), dynamic (Imagen's; with --paper), none")


def sampling_args(a: argparse.Namespace) -> dict:
    """{"sampler", "steps", "guidance" (a Guidance), "guidance_text", "clip"} from `add_sampling_args`' flags,
    checked (a bad value is a GeneratorError before anything is loaded)."""
    base = PAPER_SAMPLING if a.paper else SAMPLING
    sampler = a.sampler or base["sampler"]
    steps = a.steps if a.steps is not None else (base["steps"] if sampler == base["sampler"] else None)
    text = a.guidance or base["guidance"]
    return {"sampler": sampler, "steps": check_sampling(sampler, steps), "guidance_text": text,
            "guidance": parse_guidance(text, a.context_guidance, a.oscillate, a.reference_guidance),
            "clip": a.clip or base["clip"]}


def find_instructions(path) -> list[tuple[str, Path]]:
    """(name, path) of the instructions at `path`: an instruction.json, a folder holding one, or a folder of such
    folders / instruction JSON files (other JSON files there, such as the examples' index.json, are not
    instructions: `cli_sample` lists them as skipped)."""
    path = Path(path)
    if path.is_file() or (path / "instruction.json").is_file():
        return [(path.stem if path.is_file() and path.name != "instruction.json" else
                 (path.parent.name if path.is_file() else path.name), path)]
    if path.is_dir():
        found = sorted([(p.name, p) for p in path.iterdir() if (p / "instruction.json").is_file()]
                       + [(p.stem, p) for p in path.glob("*.json") if is_instruction_json(p)])
        names = [n for n, _ in found]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise GeneratorError(f"--instruction {path}: {twice[0]!r} is both a folder and a JSON file there; their "
                                 "images would have the same names: rename one")
        if found:
            return found
    raise GeneratorError(f"--instruction {path}: no instruction found; give an instruction.json, a folder written by "
                         "Instruction.save, or a folder of those")


def is_instruction_json(path) -> bool:
    """True when `path` holds a JSON object with the keys of an instruction ("text" and "contexts")."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "text" in d and "contexts" in d


def cli_sample(argv=None) -> int:
    """`iimagen sample --checkpoint DIR --instruction FOLDER_OR_JSON --out DIR [--sampler --steps --guidance --seed
    --num --force]`: writes OUT/<name>_<j>.png per instruction and image.

    Every option, the instructions, the checkpoint's config and the output folder are checked before the model is
    loaded; existing PNGs are overwritten only with --force, and each PNG is written atomically."""
    from PIL import Image

    from .checkpoint import export_of, read_config
    from .cli import fail
    from .instruction import Instruction
    from .paths import atomic_write, check_output
    from .tokenizer import load_tokenizer

    p = argparse.ArgumentParser(prog="iimagen sample", description=cli_sample.__doc__.split(":")[0])
    p.add_argument("--checkpoint", required=True, help="exported model folder (config.json, params/, ...)")
    p.add_argument("--instruction", required=True, help="instruction.json, its folder, or a folder of them")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num", type=int, default=1, help="images per instruction")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--force", action="store_true", help="overwrite PNGs of the same names in --out")
    a = p.parse_args(argv)
    try:
        s = sampling_args(a)
        for name, v, lo in (("--num", a.num, 1), ("--batch-size", a.batch_size, 1), ("--seed", a.seed, 0)):
            if v < lo:
                raise GeneratorError(f"{name} {v}: give an integer >= {lo}")
        named = find_instructions(a.instruction)
        instructions = [Instruction.load(path) for _, path in named]
        cfg, _, _ = read_config(a.checkpoint)  # cheap: the instructions are checked against the model before loading
        check_instructions(instructions, cfg, load_tokenizer(export_of(a.checkpoint) / "tokenizer.json"))
        files = [f"{name}_{j}.png" for name, _ in named for j in range(a.num)]
        out = check_output(a.out, files, a.force)
        gen = Generator.load(a.checkpoint)
        images = gen.generate(instructions, sampler=s["sampler"], steps=s["steps"], guidance=s["guidance"],
                              seed=a.seed, batch_size=a.batch_size, num_images=a.num, clip=s["clip"])
    except ValueError as e:  # CheckpointError, GeneratorError, InstructionError, OutputError: all ValueErrors
        return fail("iimagen sample", e)
    out.mkdir(parents=True, exist_ok=True)
    flat = [img for imgs in images for img in (imgs if a.num > 1 else [imgs])]
    for f, img in zip(files, flat):
        atomic_write(out / f, lambda tmp, im=img: Image.fromarray(im).save(tmp, format="PNG"))
    skipped = sorted(q.name for q in Path(a.instruction).glob("*.json") if not is_instruction_json(q)) \
        if Path(a.instruction).is_dir() and not (Path(a.instruction) / "instruction.json").is_file() else []
    print(json.dumps({"written": len(files), "out": str(out), "sampler": s["sampler"], "steps": s["steps"],
                      "guidance": s["guidance_text"], "clip": s["clip"], "seed": a.seed,
                      **({"skipped_not_instructions": skipped} if skipped else {})}))
    return 0
