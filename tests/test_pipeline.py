"""iimagen.checkpoint and iimagen.pipeline: export round trips, the Generator's batching, seeds and errors, the CLI."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from flax import nnx

from iimagen import checkpoint as C
from iimagen.configs import get_config
from iimagen.diffusion import Guidance
from iimagen.instruction import Context, Instruction
from iimagen.model import InstructImagen
from iimagen.pipeline import Generator, GeneratorError, cli_sample
from iimagen.tokenizer import load_tokenizer

CFG = dict(channels=16, text_width=32, text_layers=1, text_len=12, ctx_text_len=6, K=2, norm_groups=8, head_dim=16,
           resolution=16)
FAST = dict(sampler="ddim", steps=2, guidance=Guidance.none(), progress=False)


def random_model(seed):
    """A tiny model with random weights, filled from numpy (a real init compiles for ~30 s on a small CPU)."""
    return C.random_model(get_config("tiny", **CFG), seed, scale=0.2)


@pytest.fixture(scope="module")
def model():
    return random_model(1)


@pytest.fixture(scope="module")
def gen(model):
    return Generator(model, load_tokenizer(), {"stage": 2})


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return C.save_model(tmp_path_factory.mktemp("ck") / "tiny", model, {"stage": 2, "steps": 0})


def instructions(n=3):
    r = np.random.default_rng(0)
    img = lambda: r.integers(0, 255, (20, 20, 3), np.uint8)
    out = [Instruction("a red circle on a blue sky"),
           Instruction("Generate [ref#1] in the style of [ref#2]", [Context(img(), "subject", kind="subject"),
                                                                   Context(img(), "style image", kind="style")]),
           Instruction("follow [ref#1] edge map: a green square", [Context(img(), "edge map", kind="edge")])]
    return out[:n]


# -- checkpoints ----------------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_gives_identical_outputs(model, gen, exported):
    m2, tok, meta = C.load_model(exported)
    assert meta == {"stage": 2, "steps": 0} and m2.cfg == model.cfg and tok.vocab_size == load_tokenizer().vocab_size
    cfg_json = json.loads((exported / "config.json").read_text())
    assert cfg_json["params_dtype"] == "float32" and (exported / "MODEL_CARD.md").exists()
    ins = instructions()
    same = Generator(m2, tok).generate(ins, batch_size=3, **FAST)
    for x, y in zip(same, gen.generate(ins, batch_size=3, **FAST)):
        np.testing.assert_array_equal(x, y)
    other = Generator(random_model(7), tok).generate(ins, batch_size=3, **FAST)
    assert not np.array_equal(other[0], same[0])  # the weights matter


def test_bf16_storage_round_trip(model, tmp_path):
    d = C.save_model(tmp_path / "bf16", model, {}, dtype="bfloat16")
    m2, _, _ = C.load_model(d)
    a, b = C._flat_params(model), C._flat_params(m2)
    assert all(v.dtype == jnp.float32 for v in b.values())
    for k in a:  # bf16 keeps 8 bits of mantissa: relative error <= 2^-8
        np.testing.assert_allclose(b[k], a[k], rtol=2**-8, atol=1e-30)
    size = lambda p: sum(f.stat().st_size for f in (p / "params").rglob("*") if f.is_file())
    d32 = C.save_model(tmp_path / "fp32", model, {})
    assert size(d) < 0.7 * size(d32)


def test_checkpoint_errors(model, exported, tmp_path):
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.load_model(tmp_path / "nope")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(C.CheckpointError, match="tokenizer.json is missing"):
        C.load_model(broken)
    other = tmp_path / "other"
    shutil.copytree(exported, other)
    raw = json.loads((other / "config.json").read_text())
    raw["model"]["channels"] = 32  # a config that does not match the stored params
    (other / "config.json").write_text(json.dumps(raw))
    with pytest.raises(C.CheckpointError, match="channels=32"):
        C.load_model(other)
    raw["model"]["channels"], raw["model"]["use_context"] = 16, False
    (other / "config.json").write_text(json.dumps(raw))
    with pytest.raises(C.CheckpointError, match="use_context=False"):
        C.load_model(other)
    with pytest.raises(C.CheckpointError, match="dtype"):
        C.save_model(tmp_path / "x", model, {}, dtype="float16")


# -- Generator --------------------------------------------------------------------------------------------------------
def test_generate_shapes_seeds_and_padding(gen):
    ins = instructions()
    a = gen.generate(ins, seed=0, batch_size=2, **FAST)  # 3 instructions in batches of 2: the last one is padded
    assert len(a) == 3 and all(x.shape == (16, 16, 3) and x.dtype == np.uint8 for x in a)
    b = gen.generate(ins, seed=0, batch_size=2, **FAST)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    d = gen.generate(ins, seed=1, batch_size=2, **FAST)
    assert not np.array_equal(a[0], d[0])
    e = gen.generate(ins, seed=0, batch_size=3, **FAST)  # another batch size: the same images
    for x, y in zip(a, e):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


def test_generate_num_images_and_intermediates(gen):
    imgs, inter = gen.generate(instructions(2), seed=0, num_images=2, batch_size=3, return_intermediates=True,
                               intermediates_every=1, **FAST)
    assert len(imgs) == 2 and all(len(g) == 2 for g in imgs)
    assert not np.array_equal(imgs[0][0], imgs[0][1])  # two draws of one instruction differ
    assert inter[1][0].shape == (2, 16, 16, 3) and inter[1][0].dtype == np.uint8


def test_generator_errors(gen, exported, tmp_path):
    with pytest.raises(GeneratorError, match="Instruction\\(text"):
        gen.generate(["a red circle"], **FAST)
    r = np.zeros((16, 16, 3), np.uint8)
    three = Instruction("[ref#1] [ref#2] [ref#3]", [Context(r, "a"), Context(r, "b"), Context(r, "c")])
    with pytest.raises(GeneratorError, match="K=2"):
        gen.generate([three], **FAST)
    with pytest.raises(GeneratorError, match="sampler"):
        gen.generate(instructions(1), sampler="euler", progress=False)
    with pytest.raises(GeneratorError, match="batch_size"):
        gen.generate(instructions(1), batch_size=0, progress=False)
    with pytest.raises(C.CheckpointError, match="does not exist"):
        Generator.load(tmp_path / "missing")
    g2 = Generator.load(exported)
    assert g2.meta["stage"] == 2


def test_cli_sample(exported, tmp_path, capsys):
    for i, ins in enumerate(instructions(2)):
        ins.save(tmp_path / "ins" / f"n{i}")
    rc = cli_sample(["--checkpoint", str(exported), "--instruction", str(tmp_path / "ins"), "--out",
                     str(tmp_path / "out"), "--sampler", "ddim", "--steps", "2", "--guidance", "none", "--num", "2",
                     "--batch-size", "3"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["n0_0.png", "n0_1.png", "n1_0.png", "n1_1.png"]
    rc = cli_sample(["--checkpoint", str(tmp_path / "nope"), "--instruction", str(tmp_path / "ins"), "--out",
                     str(tmp_path / "out")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    # [ref#2] (the style image) guided at 4: the text-only instruction n0 is unchanged, n1 (which has one) moves
    rc = cli_sample(["--checkpoint", str(exported), "--instruction", str(tmp_path / "ins"), "--out",
                     str(tmp_path / "ref"), "--sampler", "ddim", "--steps", "2", "--guidance", "none", "--num", "2",
                     "--batch-size", "3", "--reference-guidance", "2=4"])
    assert rc == 0
    png = lambda d, n: np.asarray(Image.open(tmp_path / d / n), np.int16)
    assert np.array_equal(png("ref", "n0_0.png"), png("out", "n0_0.png"))
    assert np.abs(png("ref", "n1_0.png") - png("out", "n1_0.png")).max() > 0
    rc = cli_sample(["--checkpoint", str(exported), "--instruction", str(tmp_path / "ins"), "--out",
                     str(tmp_path / "bad"), "--reference-guidance", "ref#2"])
    assert rc == 2 and "I=W pairs" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_parse_guidance():
    from iimagen.pipeline import parse_guidance

    assert parse_guidance("paper") == Guidance.paper() and parse_guidance("none") == Guidance.none()
    assert parse_guidance("2", 5.0) == Guidance.separate(2.0, 5.0)
    assert parse_guidance("none", 3.0, None, "ref#1=2, 2=0.5") == Guidance.separate(1.0, 3.0, False, {1: 2, 2: 0.5})
    for bad in ("2", "x=1", "1=", "0=1"):
        with pytest.raises(GeneratorError, match="reference-guidance"):
            parse_guidance("none", None, None, bad)
