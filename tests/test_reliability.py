"""Nothing silent, nothing lost (docs/reliability.md): NaN and range guards, verified checkpoints, safe writes, images
as users have them, texts that do not fit, and every option checked before the work. Each test breaks a promise on
purpose and checks that the kit says so, in one line, before anything is lost."""
from __future__ import annotations

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from iimagen import checkpoint as C
from iimagen import cli, paths
from iimagen import train as T
from iimagen.configs import get_config
from iimagen.diffusion import Guidance
from iimagen.instruction import Context, Instruction, InstructionError, batch_instructions, to_rgb_uint8
from iimagen.pipeline import Generator, GeneratorError, find_instructions
from iimagen.tokenizer import load_tokenizer

CFG = dict(channels=16, text_width=32, text_layers=1, text_len=12, ctx_text_len=6, K=2, norm_groups=8, head_dim=16,
           resolution=16)
MICRO = "channels=16,channel_mult=1:2,blocks_per_level=1,text_width=32,text_layers=1,head_dim=16,norm_groups=8"
FAST = dict(sampler="ddim", steps=2, guidance=Guidance.none(), progress=False)


@pytest.fixture(scope="module")
def model():
    return C.random_model(get_config("tiny", **CFG), 3, scale=0.2)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return C.save_model(tmp_path_factory.mktemp("ck") / "tiny", model, {"stage": 2})


def run_cli(capsys, *argv):
    """(exit code, stderr) of `iimagen ARGV` run in-process."""
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def biggest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# ---------------------------------------------------------------------------------------------------------------------
# 1. NaN and range guards
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, flag", [
    ("lr", math.nan, "--lr nan"), ("lr", -1e-3, "--lr"), ("lr", 1e8, "--lr"), ("lr", math.inf, "--lr"),
    ("steps", -1, "--steps"), ("steps", 0, "--steps"), ("ema", 2.0, "--ema"), ("ema", 1.0, "--ema"),
    ("warmup", -5, "--warmup"), ("keep", 0, "--keep"), ("ckpt_every", 0, "--ckpt-every"),
    ("batch_size", 0, "--batch-size"), ("log_every", 0, "--log-every"), ("clip", 0.0, "--clip"),
    ("clip", math.nan, "--clip"), ("time_budget", -1.0, "--time-budget"), ("seed", -1, "--seed"),
    ("workers", -2, "--workers"), ("pool_size", 3, "--pool-size"), ("export_dtype", "int8", "--export-dtype"),
    ("dtype", "float16", "--dtype"), ("config", "bogus", "--config"), ("override", "channels=abc", "--override"),
    ("override", "channel_mult=1:x", "--override"), ("variant", "single_task=bogus", "--variant"),
    ("ctx_lr_scale", math.inf, "--ctx-lr-scale"), ("sample_every", -1, "--sample-every"),
    ("ref_drop", 1.5, "--ref-drop"), ("ref_drop", 0.1, "--ref-drop 0.1 applies to stage 2"),
])
def test_every_train_option_is_checked_before_anything_is_built(field, value, flag):
    with pytest.raises(T.TrainError) as e:
        T.TrainConfig(**{field: value}).resolved()
    assert flag in str(e.value)


def test_train_cli_refuses_bad_options_in_one_line_and_creates_nothing(tmp_path, capsys):
    for argv in (["--lr", "nan"], ["--steps", "-1"], ["--keep", "0"], ["--config", "bogus"],
                 ["--override", "channels=abc"], ["--dtype", "float16"], ["--export-dtype", "int8"],
                 ["--stage", "2", "--init", tmp_path / "none"], ["--stage", "1"]):
        rc, err = run_cli(capsys, "train", "--workdir", tmp_path / "w", *argv)
        assert rc == 2 and one_line(err) and err.startswith("iimagen train: "), (argv, err)
    assert not (tmp_path / "w").exists()
    (tmp_path / "file").write_text("mine")
    rc, err = run_cli(capsys, "train", "--workdir", tmp_path / "file" / "w")
    assert rc == 2 and "is a file" in err


def nan_after(k: int) -> optax.GradientTransformation:
    """An optimizer stage that turns every update into NaN from its k-th call on (a stand-in for a diverging lr)."""
    def update(updates, state, params=None):
        bad = state >= k
        return jax.tree.map(lambda u: jnp.where(bad, jnp.nan, u), updates), state + 1
    return optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)


def test_training_stops_at_the_step_that_diverges_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    adam = T.make_optimizer
    monkeypatch.setattr(T, "make_optimizer", lambda tc: optax.chain(adam(tc), nan_after(2)))  # step 3 diverges
    wd = tmp_path / "run"
    with pytest.raises(T.DivergedError) as e:
        T.train(T.TrainConfig(stage=0, workdir=str(wd), override=MICRO, steps=8, batch_size=2, log_every=1,
                              ckpt_every=2, workers=0), progress=False)
    msg = str(e.value)
    assert "step 3" in msg and "--lr" in msg and "step 2, is kept" in msg
    assert sorted(d.name for d in (wd / "checkpoints").iterdir()) == ["2"]  # nothing non-finite was saved
    assert not (wd / "export").exists()                                        # nor exported
    recs = T.read_metrics(wd)
    assert [r["step"] for r in recs] == [1, 2] and all(math.isfinite(r["loss"]) for r in recs)
    # the kept checkpoint is finite and loads as a model
    m, _, meta = T.load_any(str(wd))
    assert meta["steps"] == 2 and C.bad_weights(C.flat_params(m)) is None
    # a rerun in a workdir whose metrics have no checkpoint is refused (it would replace them) unless --force
    shutil.rmtree(wd / "checkpoints")
    with pytest.raises(T.TrainError, match="--force"):
        T.train(T.TrainConfig(stage=0, workdir=str(wd), override=MICRO, steps=1), progress=False)


def test_non_finite_or_absurd_weights_are_refused_everywhere(model, tmp_path):
    nan = C.random_model(model.cfg, 0)
    kernel = next(k for k in C.flat_params(nan) if k.endswith("kernel"))
    from flax import nnx

    state = nnx.state(nan, nnx.Param)
    leaf = state
    for part in kernel.split("/"):
        leaf = leaf[int(part) if part.isdigit() else part]
    leaf.value = leaf.value.at[(0,) * leaf.value.ndim].set(jnp.nan)
    nnx.update(nan, state)
    assert "NaN" in C.bad_weights(C.flat_params(nan))
    with pytest.raises(GeneratorError, match="NaN"):
        Generator(nan, load_tokenizer())
    with pytest.raises(C.CheckpointError, match="nothing was written"):
        C.save_model(tmp_path / "nan", nan, {})
    assert not (tmp_path / "nan").exists()
    assert "1e+36" in C.bad_weights({"a": np.full(3, 1e36, np.float32)}) and C.bad_weights({"a": np.ones(3)}) is None


def test_a_sample_that_comes_out_nan_is_an_error_not_a_black_image(model, monkeypatch):
    from iimagen import diffusion

    gen = Generator(model, load_tokenizer())
    monkeypatch.setattr(diffusion, "sample", lambda m, batch, keys, **kw: jnp.full((len(keys), 16, 16, 3), jnp.nan))
    with pytest.raises(GeneratorError, match=r"NaN/inf for instruction\(s\) \[0, 1\]"):
        gen.generate([Instruction("a red circle"), Instruction("a blue square")], **FAST)


def test_sampling_steps_have_an_upper_bound(model):
    gen = Generator(model, load_tokenizer())
    for steps in (100000, 0, 2.5):
        with pytest.raises(GeneratorError, match="steps"):
            gen.generate([Instruction("a red circle")], sampler="ddpm", steps=steps, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# 2. Verified checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def flip(path, n=16):
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    b[mid:mid + n] = bytes(x ^ 0xFF for x in b[mid:mid + n])
    path.write_bytes(bytes(b))


DAMAGE = {
    "flipped bytes": lambda d: flip(biggest_file(d / "params")),
    "truncated file": lambda d: biggest_file(d / "params").write_bytes(biggest_file(d / "params").read_bytes()[:99]),
    "missing _METADATA": lambda d: (d / "params" / "_METADATA").unlink(),
    "missing data file": lambda d: biggest_file(d / "params").unlink(),
    "missing manifest": lambda d: (d / "params" / "manifest.ocdbt").unlink(),
    "emptied params": lambda d: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in (d / "params").iterdir()],
    "garbled config": lambda d: (d / "config.json").write_text('{"format": 1, "model": {"chan'),
    "garbled tokenizer": lambda d: (d / "tokenizer.json").write_text("not json"),
    "changed checksum": lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"params_sha256": "', '"params_sha256": "0')),
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_every_damaged_checkpoint_is_one_clear_error_naming_the_folder(exported, tmp_path, capsys, how):
    d = tmp_path / "copy"
    shutil.copytree(exported, d)
    DAMAGE[how](d)
    with pytest.raises(C.CheckpointError) as e:
        C.load_model(d)
    assert str(d) in str(e.value) and ("copy the folder again" in str(e.value) or "re-export" in str(e.value))
    Instruction("a red circle").save(tmp_path / "ins")
    rc, err = run_cli(capsys, "sample", "--checkpoint", d, "--instruction", tmp_path / "ins", "--out", tmp_path / "o",
                      "--sampler", "ddim", "--steps", "2")
    assert rc == 2 and one_line(err) and str(d) in err


def test_flipped_weights_that_stay_finite_are_caught_by_the_checksum(model, exported, tmp_path):
    """A bit flip that leaves a plausible number: only the checksum can tell (the issue's 1.96e36 is caught twice)."""
    import orbax.checkpoint as ocp

    d = tmp_path / "copy"
    shutil.copytree(exported, d)
    stored = C._unnest(ocp.StandardCheckpointer().restore(d / "params"))
    key = sorted(stored)[0]
    stored[key] = np.asarray(stored[key]).copy()
    stored[key].flat[0] += 0.5
    shutil.rmtree(d / "params")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(d / "params", C._nest(stored))
    ckptr.wait_until_finished()
    with pytest.raises(C.CheckpointError, match="checksum"):
        C.load_model(d)


def test_exports_without_a_checksum_still_load_and_can_be_given_one(exported, tmp_path):
    d = tmp_path / "old"
    shutil.copytree(exported, d)
    raw = json.loads((d / "config.json").read_text())
    want = raw.pop("params_sha256")
    (d / "config.json").write_text(json.dumps(raw))
    C.load_model(d)                                   # an export made before checksums: loads, weights still checked
    assert C.add_checksum(d) == want                  # the checksum of the stored weights, whatever wrote them
    assert json.loads((d / "config.json").read_text())["params_sha256"] == want


def test_every_shipped_export_carries_a_checksum_that_matches():
    shipped = sorted(p for p in paths.CHECKPOINTS.iterdir() if (p / "config.json").exists())
    assert shipped
    for d in shipped:
        assert "params_sha256" in json.loads((d / "config.json").read_text()), d
        C.read_weights(d)  # verified: raises on a mismatch


def test_a_damaged_training_checkpoint_names_its_folder(tmp_path):
    """`--init` / `eval --checkpoint` on a workdir read its latest checkpoint: damage there is a TrainError too."""
    import orbax.checkpoint as ocp

    import dataclasses

    from flax import nnx

    wd = tmp_path / "run"
    mngr = ocp.CheckpointManager(wd / "checkpoints", options=ocp.CheckpointManagerOptions(create=True))
    m = C.random_model(get_config("tiny", **CFG))
    T.save_state(mngr, {"ema": nnx.split(m, nnx.Param)[1], "step": jnp.asarray(3, jnp.int32)},
                 {"model": dataclasses.asdict(m.cfg), "train": {}})
    mngr.wait_until_finished()
    assert T.load_latest_ema(wd)[2]["steps"] == 3
    big = biggest_file(wd / "checkpoints" / "3")
    big.write_bytes(big.read_bytes()[:99])  # truncated
    with pytest.raises(T.TrainError, match=r"checkpoints/3 cannot be read.*move that folder away"):
        T.load_latest_ema(wd)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Safe writes
# ---------------------------------------------------------------------------------------------------------------------
def test_save_model_never_deletes_what_it_did_not_write(model, exported, tmp_path):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "chapter1.tex").write_text("months of work")
    for overwrite in (False, True):
        with pytest.raises(C.CheckpointError, match="not an exported model"):
            C.save_model(user, model, {}, overwrite=overwrite)
    assert (user / "chapter1.tex").read_text() == "months of work"
    d = tmp_path / "copy"
    shutil.copytree(exported, d)
    with pytest.raises(C.CheckpointError, match="overwrite=True"):
        C.save_model(d, model, {"new": 1})            # the default never replaces an export
    C.save_model(d, model, {"new": 1}, overwrite=True)
    assert C.load_model(d)[2] == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "thesis"]   # no temporary folder left behind
    (tmp_path / "empty").mkdir()
    C.save_model(tmp_path / "empty", model, {})       # an empty folder holds nothing to lose


def test_atomic_write_leaves_the_old_file_whole_when_writing_fails(tmp_path):
    f = tmp_path / "scores.json"
    f.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        paths.atomic_write(f, broken)
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_sample_checks_out_before_loading_and_overwrites_only_with_force(exported, tmp_path, capsys, monkeypatch):
    Instruction("a red circle").save(tmp_path / "ins" / "a")
    args = ["sample", "--checkpoint", exported, "--instruction", tmp_path / "ins", "--sampler", "ddim", "--steps",
            "2", "--guidance", "none"]
    loaded = []
    real_load = Generator.load.__func__
    monkeypatch.setattr(Generator, "load", classmethod(lambda cls, d: loaded.append(d) or real_load(cls, d)))
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_0.png").write_bytes(b"my own picture")
    for bad_out, why in ((tmp_path / "a_file", "is a file"), (tmp_path / "a_file" / "sub", "is a file"),
                         (out, "--force")):
        rc, err = run_cli(capsys, *args, "--out", bad_out)
        assert rc == 2 and why in err and one_line(err)
    for bad in (["--steps", "100000"], ["--num", "0"], ["--batch-size", "0"], ["--seed", "-1"]):
        rc, err = run_cli(capsys, *args, "--out", tmp_path / "new", *bad)
        assert rc == 2 and one_line(err), bad
    assert loaded == [] and (out / "a_0.png").read_bytes() == b"my own picture" and not (tmp_path / "new").exists()
    rc, _ = run_cli(capsys, *args, "--out", out, "--force")
    assert rc == 0 and np.asarray(Image.open(out / "a_0.png")).shape == (16, 16, 3)
    assert sorted(p.name for p in out.iterdir()) == ["a_0.png"]  # no temporary file left


def test_eval_checks_out_before_loading(exported, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "table.md").write_text("last week's table")
    rc, err = run_cli(capsys, "eval", "--checkpoint", tmp_path / "missing", "--out", tmp_path / "o")
    assert rc == 2 and "table.md" in err and "--force" in err   # --out is checked before the checkpoint is read
    rc, err = run_cli(capsys, "eval", "--checkpoint", exported, "--out", tmp_path / "o", "--steps", "5000")
    assert rc == 2 and "steps" in err
    assert (tmp_path / "o" / "table.md").read_text() == "last week's table"


def test_instruction_save_writes_a_complete_folder_and_refuses_other_files(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    two = Instruction("[ref#1] in the style of [ref#2]", [Context(img, "subject"), Context(img + 9, "style")])
    one = Instruction("follow [ref#1]", [Context(img + 200, "edge map", kind="edge")])
    two.save(tmp_path / "ins")
    with pytest.raises(InstructionError, match="overwrite=True"):
        one.save(tmp_path / "ins")
    assert Instruction.load(tmp_path / "ins") == two
    one.save(tmp_path / "ins", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "ins").iterdir()) == ["context_1.png", "instruction.json"]
    assert Instruction.load(tmp_path / "ins") == one
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "context_1.png").write_bytes(b"a user's photo")
    for overwrite in (False, True):
        with pytest.raises(InstructionError, match="other files"):
            one.save(tmp_path / "photos", overwrite=overwrite)
    assert (tmp_path / "photos" / "context_1.png").read_bytes() == b"a user's photo"


def test_a_failed_train_leaves_no_empty_workdir(exported, tmp_path):
    # --init holds a model whose config is not --config's: refused after loading it, before the workdir is made
    with pytest.raises(T.TrainError, match="--config"):
        T.train(T.TrainConfig(stage=2, config="small", init=str(exported), workdir=str(tmp_path / "w"), steps=1),
                progress=False)
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------------------------------------------
# 4. Images as users have them
# ---------------------------------------------------------------------------------------------------------------------
RAMP16 = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535 in 256 steps
WANT = np.repeat(np.round(RAMP16 / 65535.0 * 255).astype(np.uint8)[..., None], 3, -1)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_files_are_scaled_not_saturated(tmp_path, fmt):
    f = tmp_path / f"depth.{fmt}"
    Image.fromarray(RAMP16).save(f)
    assert Image.open(f).mode in ("I;16", "I", "I;16B")
    out = to_rgb_uint8(f)
    assert np.array_equal(out, WANT) and (out == 255).mean() < 0.01   # was 99.6 % white


def test_16_bit_and_float_pil_images_and_arrays(tmp_path):
    assert np.array_equal(to_rgb_uint8(Image.fromarray(RAMP16)), WANT)                        # I;16
    assert np.array_equal(to_rgb_uint8(Image.fromarray(RAMP16.astype(np.int32))), WANT)       # I
    assert np.array_equal(to_rgb_uint8(RAMP16), WANT)                                         # uint16 array
    half = np.full((16, 16), 0.5, np.float32)
    assert (to_rgb_uint8(Image.fromarray(half)) == 128).all()                                 # F in [0, 1]
    Image.fromarray(half).save(tmp_path / "f.tiff")
    assert (to_rgb_uint8(tmp_path / "f.tiff") == 128).all()                                   # float TIFF: not black
    with pytest.raises(InstructionError, match=r"in \[0, 1\]"):
        to_rgb_uint8(Image.fromarray(half * 1000))                                            # F in metres: refused
    with pytest.raises(InstructionError, match="0..65535"):
        to_rgb_uint8(Image.fromarray(np.full((16, 16), 70000, np.int32)))
    with pytest.raises(InstructionError, match="dtype int32"):
        to_rgb_uint8(np.full((16, 16), 7, np.int32))                                          # range unknown


# ---------------------------------------------------------------------------------------------------------------------
# 5. Texts that do not fit
# ---------------------------------------------------------------------------------------------------------------------
def test_a_text_longer_than_the_model_reads_is_an_error_naming_count_and_limit(model):
    tok = load_tokenizer()
    gen = Generator(model, tok)                                   # text_len 12, ctx_text_len 6
    img = np.zeros((16, 16, 3), np.uint8)
    long = "a red circle and a blue square and a green star on a wooden table in the style of [ref#1]"
    n = len(tok.tokens(long))
    assert n > 12
    ins = Instruction(long, [Context(img, "style")])
    with pytest.raises(GeneratorError, match=f"{n} tokens but the model reads 12"):
        gen.generate([ins], **FAST)
    with pytest.raises(InstructionError, match=f"{n} tokens but the model reads 12"):
        batch_instructions([ins], tok, 16, 2, 12, 6)
    ctx = Instruction("[ref#1]", [Context(img, "a large striped purple subject with green spots")])
    with pytest.raises(GeneratorError, match=r"context 1's text .* tokens but the model reads 6"):
        gen.generate([ctx], **FAST)
    fits = " " + " ".join(["red"] * 12)  # "Ġred" x 12
    assert len(tok.tokens(fits)) == 12 and len(gen.generate([Instruction(fits)], **FAST)) == 1  # exactly the limit


# ---------------------------------------------------------------------------------------------------------------------
# 6. Options before work; one line, exit 2; --debug; Ctrl-C
# ---------------------------------------------------------------------------------------------------------------------
def test_sample_reads_only_instructions_from_a_folder():
    names = [n for n, _ in find_instructions(paths.EXAMPLES)]
    assert "index" not in names and "subject" in names


def test_cli_errors_are_one_line_tracebacks_only_with_debug(tmp_path, capsys, monkeypatch):
    rc, err = run_cli(capsys, "sample", "--checkpoint", tmp_path / "nope", "--instruction", tmp_path, "--out", tmp_path)
    assert rc == 2 and one_line(err)
    with pytest.raises(GeneratorError):
        cli.main(["sample", "--checkpoint", str(tmp_path / "nope"), "--instruction", str(tmp_path), "--out",
                  str(tmp_path), "--debug"])
    cli.DEBUG = False
    from iimagen import pipeline

    def interrupted(argv):
        raise KeyboardInterrupt

    def bug(argv):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(pipeline, "cli_sample", interrupted)
    rc, err = run_cli(capsys, "sample")
    assert rc == 130 and one_line(err) and "interrupted" in err
    monkeypatch.setattr(pipeline, "cli_sample", bug)
    rc, err = run_cli(capsys, "sample")
    assert rc == 1 and one_line(err) and "--debug" in err and "ZeroDivisionError" in err


def test_the_real_command_prints_one_line_for_a_truncated_checkpoint(exported, tmp_path):
    """In a fresh process (no pytest hooks): orbax's event-loop noise after the failed read stays hidden."""
    import subprocess
    import sys

    d = tmp_path / "copy"
    shutil.copytree(exported, d)
    DAMAGE["truncated file"](d)
    Instruction("a red circle").save(tmp_path / "ins")
    p = subprocess.run([sys.executable, "-m", "iimagen.cli", "sample", "--checkpoint", str(d), "--instruction",
                        str(tmp_path / "ins"), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       cwd=paths.REPO, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert p.returncode == 2 and one_line(p.stderr) and str(d) in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()
