"""The exported-model folder (docs/contracts.md, "Checkpoints"): what `Generator.load` and the notebooks read.

    model_dir/
      config.json     {"format": 1, "model": asdict(ModelConfig), "meta": {...}, "params_dtype": "float32",
                       "params_sha256": checksum of the stored weights (`checksum`; exports before it have none)}
      tokenizer.json  a copy of the tokenizer the model was trained with
      params/         orbax (StandardCheckpointer): the weights as a plain nested dict {"text_encoder": {...}, ...}
      MODEL_CARD.md   what the model is, written from `meta`

`save_model(dir, model, meta, dtype="bfloat16")` stores the weights in bf16 (half the size; restored to float32).
`load_model(dir) -> (model, tokenizer, meta)`. Every problem raises `CheckpointError` (a ValueError) naming the field
and the fix. A damaged export (a truncated or changed weights file, missing files or metadata) is one such error:
`load_model` verifies the weights against `params_sha256` and refuses non-finite or absurd weights (`bad_weights`).
`save_model` never replaces a folder that is not an export, and replaces an export only with `overwrite=True`. Training state (optimizer, step, data position) is not here: `iimagen.train` keeps it with orbax's
CheckpointManager in `workdir/checkpoints/` and exports this folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .model.layers import variable_value
from .paths import atomic_write

FORMAT = 1
PARAMS_DTYPES = ("float32", "bfloat16")
MAX_ABS_WEIGHT = 1e6  # no trained weight comes near it (the shipped models: |w| <= 2.5); a flipped exponent bit does


class CheckpointError(ValueError):
    """A missing, incomplete or mismatched exported model; the message names the field and the fix."""


def flat_params(model) -> dict[str, jax.Array]:
    """{"a/b/0/kernel": array} of the model's nnx.Param leaves (the same names under flax 0.11 and 0.12)."""
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    flat = state.flat_state() if hasattr(state, "flat_state") else nnx.to_flat_state(state)
    return {"/".join(map(str, p)): variable_value(v) for p, v in flat}


_flat_params = flat_params  # the name older scripts and tests use


def _flat_all(model):
    from flax import nnx

    state = nnx.state(model)
    flat = state.flat_state() if hasattr(state, "flat_state") else nnx.to_flat_state(state)
    return [(p, variable_value(v)) for p, v in flat]


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        *head, last = path.split("/")
        for k in head:
            d = d.setdefault(k, {})
        d[last] = v
    return out


def _unnest(tree, prefix="") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_unnest(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def checksum(flat: dict) -> str:
    """sha256 of weights {"a/b/kernel": array} as stored: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(flat):
        a = np.ascontiguousarray(flat[k])
        h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def bad_weights(flat: dict) -> str | None:
    """None when every floating weight is finite and below MAX_ABS_WEIGHT in size, else which one is not and how.
    (Checked with numpy on the host: eager jax ops would compile once per weight shape, 18 s for `tiny` on 2 cores.)"""
    for k in sorted(flat):
        a = np.asarray(flat[k])
        if not jnp.issubdtype(a.dtype, jnp.floating):
            continue
        a = a.astype(np.float32)
        n_bad = int(a.size - np.isfinite(a).sum())
        if n_bad:
            return f"{k!r} holds {n_bad} NaN/inf value{'s' if n_bad > 1 else ''}"
        top = float(np.abs(a).max()) if a.size else 0.0
        if top > MAX_ABS_WEIGHT:
            return f"{k!r} holds {top:.3g} (no trained weight exceeds {MAX_ABS_WEIGHT:.0e})"
    return None


def is_export(directory) -> bool:
    """True when `directory` is an exported-model folder: config.json with a "format" field, and params/."""
    directory = Path(directory)
    try:
        return "format" in json.loads((directory / "config.json").read_text()) and (directory / "params").is_dir()
    except (OSError, ValueError, TypeError):
        return False


def model_card(cfg, meta) -> str:
    """MODEL_CARD.md of an exported model: what it is (config) and how it was made (meta)."""
    lines = [f"# iimagen model: {cfg.name}", "",
             "An Instruct-Imagen (Hu et al., CVPR 2024) denoiser trained with the iimagen kit.", "",
             f"- resolution {cfg.resolution} px, {cfg.K} context slots, context branch: {cfg.use_context}"]
    lines += [f"- {k}: {v}" for k, v in sorted(meta.items())]
    lines += ["", "Load it with `iimagen.Generator.load(path)` or `iimagen.checkpoint.load_model(path)`."]
    return "\n".join(lines) + "\n"


def save_model(directory, model, meta: dict | None = None, *, tokenizer=None, dtype: str = "float32",
               overwrite: bool = False) -> Path:
    """Write the exported-model folder for `model` (an `InstructImagen`; pass the EMA weights' model).

    meta: JSON-serialisable facts (stage, steps, dataset, scores...). tokenizer: a `Tokenizer` or a path to a
    tokenizer.json (default: the one the tokenizer module loads). dtype: "float32" or "bfloat16" storage.
    An existing export is replaced whole only with `overwrite=True`; any other non-empty folder is never touched.
    Non-finite weights are refused (an export of a diverged model would only draw black images).
    """
    import orbax.checkpoint as ocp

    from . import tokenizer as tokmod

    if dtype not in PARAMS_DTYPES:
        raise CheckpointError(f"save_model: dtype={dtype!r}; use one of {PARAMS_DTYPES}")
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except TypeError as e:
        raise CheckpointError(f"save_model: meta must be JSON-serialisable ({e}); store plain numbers/strings") from None
    cfg = getattr(model, "cfg", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise CheckpointError("save_model: model has no ModelConfig `cfg`; pass an iimagen.model.InstructImagen")
    directory = Path(directory).absolute()
    if directory.is_file():
        raise CheckpointError(f"save_model: {directory} is a file; give a folder path")
    if directory.is_dir() and any(directory.iterdir()):
        if not is_export(directory):
            raise CheckpointError(f"save_model: {directory} holds files but is not an exported model; nothing is "
                                  "deleted: choose a new or empty folder")
        if not overwrite:
            raise CheckpointError(f"save_model: {directory} already holds an exported model; pass overwrite=True to "
                                  "replace it, or choose another folder")
    tok_path = getattr(tokenizer, "path", tokenizer) or tokmod.paths.TOKENIZER
    if not Path(tok_path).exists():
        raise CheckpointError(f"save_model: tokenizer file {tok_path} not found; build it with "
                              "`python -m iimagen.tokenizer` or pass tokenizer=")
    cast = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    flat = {k: np.asarray(jnp.asarray(v, cast)) if jnp.issubdtype(v.dtype, jnp.floating) else np.asarray(v)
            for k, v in flat_params(model).items()}
    bad = bad_weights(flat)
    if bad:
        raise CheckpointError(f"save_model: the model's weights are damaged ({bad}); nothing was written: export a "
                              "model from before training diverged")
    # Written beside the target under a temporary name, then swapped in: the folder is never half old, half new.
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(tmp / "params", _nest(flat))
        ckptr.wait_until_finished()
        shutil.copy(tok_path, tmp / "tokenizer.json")
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, "model": dataclasses.asdict(cfg), "meta": meta,
                                                     "params_dtype": dtype, "params_sha256": checksum(flat)},
                                                    indent=2, sort_keys=True))
        (tmp / "MODEL_CARD.md").write_text(model_card(cfg, meta))
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def export_of(directory) -> Path:
    """An exported-model folder as given, or a training workdir's `export/` (so `runs/s2` means `runs/s2/export`)."""
    directory = Path(directory)
    if not (directory / "config.json").exists() and (directory / "export" / "config.json").exists():
        return directory / "export"
    return directory


def read_config(directory):
    """(ModelConfig, meta, params_dtype) from `directory/config.json`, with clear errors."""
    from .configs import ModelConfig

    directory = export_of(directory)
    fix = ("give a run's WORKDIR/export (written when `iimagen train` ends), or export one with "
           "`iimagen.checkpoint.save_model(dir, model, meta)`")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist; {fix}")
    for name in ("config.json", "tokenizer.json", "params"):
        if not (directory / name).exists():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {name} is missing; re-export it ({fix})")
    try:
        raw = json.loads((directory / "config.json").read_text())
        cfg = ModelConfig.from_dict(raw["model"])  # JSON lists become tuples in ModelConfig.__post_init__
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / 'config.json'} is not a valid model config ({e}); re-export the "
                              "checkpoint with this version of iimagen, or copy the folder again") from None
    return cfg, raw.get("meta", {}), raw.get("params_dtype", "float32")


def read_weights(directory) -> dict:
    """The stored weights {"a/b/kernel": numpy array} of an export, as stored (bf16 stays bf16), verified against
    config.json's `params_sha256` when it has one. Damage of any kind is one CheckpointError naming the folder."""
    import orbax.checkpoint as ocp

    directory = export_of(directory).absolute()
    fix = "copy the folder again from its source, or re-export it (save_model / `iimagen train` of its run)"
    try:
        flat = {k: np.asarray(v) for k, v in _unnest(ocp.StandardCheckpointer().restore(directory / "params")).items()}
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many types for a damaged folder
        raise CheckpointError(f"checkpoint {directory}: params/ cannot be read, the folder is damaged or incomplete "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); {fix}") from None
    want = json.loads((directory / "config.json").read_text()).get("params_sha256")
    if want is not None and checksum(flat) != want:
        raise CheckpointError(f"checkpoint {directory}: the weights in params/ do not match the checksum in "
                              f"config.json (params_sha256): the files were changed or damaged; {fix}")
    bad = bad_weights(flat)
    if bad:
        raise CheckpointError(f"checkpoint {directory}: its weights are damaged ({bad}); {fix}, or export a model "
                              "from before its training diverged")
    return flat


def add_checksum(directory) -> str:
    """Write `params_sha256` into the config.json of an export made before checksums (its weights are checked first:
    a damaged export gets no checksum). Returns the checksum."""
    directory = export_of(directory).absolute()
    read_config(directory)
    flat = read_weights(directory)
    raw = json.loads((directory / "config.json").read_text())
    raw["params_sha256"] = checksum(flat)
    text = json.dumps(raw, indent=2, sort_keys=True)
    atomic_write(directory / "config.json", lambda p: p.write_text(text))
    return raw["params_sha256"]


def load_model(directory):
    """(model, tokenizer, meta) from an exported folder; the weights come back as float32, verified (`read_weights`)."""
    from flax import nnx

    from .tokenizer import TokenizerError, load_tokenizer

    directory = export_of(directory).absolute()
    cfg, meta, _ = read_config(directory)
    stored = read_weights(directory)
    # Built abstractly (no random init: that costs seconds of compilation), then every parameter is filled in.
    model = abstract_model(cfg)
    state = nnx.state(model, nnx.Param)
    flat = state.flat_state() if hasattr(state, "flat_state") else nnx.to_flat_state(state)
    new, seen = [], set()
    for path, var in flat:
        key = "/".join(map(str, path))
        if key not in stored:
            raise CheckpointError(f"checkpoint {directory}: config.json builds parameter {key!r}, which params/ "
                                  f"lacks; {_hint(key, cfg)}")
        val = variable_value(var)
        got = np.asarray(stored[key])
        if got.shape != val.shape:
            raise CheckpointError(f"checkpoint {directory}: parameter {key!r} has shape {got.shape} in params/ but "
                                  f"{tuple(val.shape)} from config.json; {_hint(key, cfg)}")
        new.append((path, var.replace(jnp.asarray(got, val.dtype))))  # bf16 storage -> float32
        seen.add(key)
    extra = sorted(set(stored) - seen)
    if extra:
        raise CheckpointError(f"checkpoint {directory}: params/ holds {extra[0]!r} (and {len(extra) - 1} more) that "
                              f"config.json does not build; {_hint(extra[0], cfg)}")
    nnx.update(model, nnx.State.from_flat_path(new))
    leftover = [p for p, v in _flat_all(model) if isinstance(v, jax.ShapeDtypeStruct)]
    if leftover:  # a non-parameter variable the export does not store (none in this version of the model)
        raise CheckpointError(f"checkpoint {directory}: the model has state {leftover[0]} that params/ does not "
                              "store; this iimagen version cannot load it, re-export with it")
    try:
        tok = load_tokenizer(directory / "tokenizer.json")
    except (TokenizerError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {directory}: tokenizer.json cannot be read ({e}); copy the folder again "
                              "or re-export it") from None
    return model, tok, meta


def _hint(key: str, cfg) -> str:
    if key.startswith("ctx_") or "ctx" in key.split("/")[-2:][0]:
        field = "use_context"
    elif key.startswith("text_encoder"):
        field = "text_width / text_layers / vocab_size / text_len"
    else:
        field = "channels / channel_mult / blocks_per_level / attn_levels / K"
    return (f"config.json and the weights disagree (look at ModelConfig.{field}, now {_fields(cfg, field)}); "
            "the weights belong to another config: re-export with save_model from the model that made them")


def _fields(cfg, field: str) -> str:
    names = [f.strip() for f in field.split("/")]
    return ", ".join(f"{n}={getattr(cfg, n)!r}" for n in names if hasattr(cfg, n))


def abstract_model(cfg):
    """An `InstructImagen` of `cfg` with shapes but no values (nothing is initialised or compiled)."""
    from flax import nnx

    from .model import InstructImagen

    return nnx.eval_shape(lambda: InstructImagen(cfg, rngs=nnx.Rngs(0)))


def random_model(cfg, seed: int = 0, scale: float = 0.05):
    """An `InstructImagen` whose every weight is N(0, scale^2), drawn with numpy: for speed tests, notebooks and unit
    tests that need *a* model in a second (the real initialiser compiles for tens of seconds on a small CPU)."""
    from flax import nnx

    m = abstract_model(cfg)
    r = np.random.default_rng(seed)
    state = nnx.state(m, nnx.Param)
    flat = state.flat_state() if hasattr(state, "flat_state") else nnx.to_flat_state(state)
    nnx.update(m, nnx.State.from_flat_path(
        [(p, v.replace(jnp.asarray(scale * r.standard_normal(variable_value(v).shape), jnp.float32))) for p, v in flat]))
    return m
