"""Instruction / Context validation, images, JSON round trips, drawing and batching (paper §2, docs/contracts.md)."""
import json

import numpy as np
import pytest
from PIL import Image

from iimagen import Context, Instruction, InstructionError, MAX_CONTEXTS, batch_instructions
from iimagen.instruction import KINDS, register_kind, to_rgb_uint8
from iimagen.tokenizer import load_tokenizer

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (16, 12, 3), dtype=np.uint8)


def ctx(text="", kind="reference", img=IMG):
    return Context(img, text, kind)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


# ------------------------------------------------------------------------------------------------ text and markers
@pytest.mark.parametrize("text, n, markers", [
    ("a red circle", 0, []),
    ("a red circle", 2, []),                                    # contexts never mentioned are fine (stage 1)
    ("draw [ref#1] in the style of [ref#2]", 2, [1, 2]),
    ("[ref#2] then [ref#1] then [ref#2] again", 2, [1, 2]),
    ("[ref#1]'s hat", 1, [1]),
    ("use [ref#8]", 8, [8]),
    ("brackets [like this] and [refs] are plain text", 0, []),
])
def test_valid_text(text, n, markers):
    ins = Instruction(text, [ctx() for _ in range(n)])
    assert ins.markers == markers and len(ins) == n


@pytest.mark.parametrize("text, n, match", [
    ("", 0, "non-empty"),
    ("   ", 0, "non-empty"),
    (None, 0, "non-empty"),
    (3, 0, "non-empty"),
    ("use [ref#0]", 1, "malformed"),
    ("use [ref#x]", 1, "malformed"),
    ("use [ref# 1]", 1, "malformed"),
    ("use [ref#01]", 1, "malformed"),
    ("use [REF#1]", 1, "malformed"),
    ("use [ref 1]", 1, "malformed"),
    ("use [ref1]", 1, "malformed"),
    ("use [ref#1", 1, "malformed"),
    ("use [ref#-1]", 1, "malformed"),
    ("use [ref#2]", 1, r"\[ref#2\].*only 1 context;"),
    ("use [ref#1]", 0, r"only 0 contexts"),
])
def test_invalid_text(text, n, match):
    with pytest.raises(InstructionError, match=match):
        Instruction(text, [ctx() for _ in range(n)])


def test_error_is_value_error():
    assert issubclass(InstructionError, ValueError)


def test_max_contexts():
    Instruction("x", [ctx() for _ in range(MAX_CONTEXTS)])
    with pytest.raises(InstructionError, match="at most MAX_CONTEXTS=8"):
        Instruction("x", [ctx() for _ in range(MAX_CONTEXTS + 1)])


def test_contexts_must_be_contexts():
    with pytest.raises(InstructionError, match=r"contexts\[0\].*Context\(image"):
        Instruction("x", [IMG])
    with pytest.raises(InstructionError, match="list of Context"):
        Instruction("x", "oops")


# ------------------------------------------------------------------------------------------------ context texts
@pytest.mark.parametrize("texts, want", [
    (["edge map"], ["[ref#1] edge map"]),
    (["[ref#1] edge map"], ["[ref#1] edge map"]),
    (["", ""], ["[ref#1]", "[ref#2]"]),
    (["a dog", "[ref#2] style image", "content"], ["[ref#1] a dog", "[ref#2] style image", "[ref#3] content"]),
])
def test_context_prefix(texts, want):
    ins = Instruction("x", [ctx(t) for t in texts])
    assert [c.text for c in ins.contexts] == want


@pytest.mark.parametrize("texts, match", [
    (["[ref#2] edge map"], r"context 1.*must start with \[ref#1\]"),
    (["a", "[ref#1] b"], r"context 2.*must start with \[ref#2\]"),
    (["edge map [ref#1]"], "only its own marker, at the start"),
    (["[ref#1] like [ref#2]"], "only its own marker"),
    (["[ref#0] x"], "malformed"),
])
def test_context_bad_marker(texts, match):
    with pytest.raises(InstructionError, match=match):
        Instruction("x", [ctx(t) for t in texts])


@pytest.mark.parametrize("kind", KINDS[:8])
def test_kinds_valid(kind):
    assert Context(IMG, "", kind).kind == kind


def test_kind_unknown_lists_valid():
    with pytest.raises(InstructionError, match="reference, subject, style, content, edge, depth, mask, sketch"):
        Context(IMG, "", "pose")
    with pytest.raises(InstructionError, match="string"):
        Context(IMG, 5)


def test_register_kind():
    register_kind("pose_test")
    assert Context(IMG, "", "pose_test").kind == "pose_test"
    with pytest.raises(InstructionError, match="lower-case identifier"):
        register_kind("Bad Kind")
    KINDS.remove("pose_test")


# ------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("make, expect", [
    (lambda: IMG, lambda o: np.array_equal(o, IMG)),
    (lambda: IMG.astype(np.float32) / 255, lambda o: np.array_equal(o, IMG)),
    (lambda: IMG.astype(np.float64) / 255, lambda o: np.array_equal(o, IMG)),
    (lambda: IMG[..., 0], lambda o: np.array_equal(o, np.repeat(IMG[..., :1], 3, -1))),
    (lambda: IMG[..., :1], lambda o: np.array_equal(o, np.repeat(IMG[..., :1], 3, -1))),
    (lambda: np.dstack([IMG, np.full(IMG.shape[:2], 255, np.uint8)]), lambda o: np.array_equal(o, IMG)),
    (lambda: np.dstack([IMG, np.zeros(IMG.shape[:2], np.uint8)]), lambda o: (o == 255).all()),  # transparent -> white
    (lambda: Image.fromarray(IMG), lambda o: np.array_equal(o, IMG)),
    (lambda: Image.fromarray(IMG[..., 0]), lambda o: np.array_equal(o, np.repeat(IMG[..., :1], 3, -1))),
    (lambda: Image.fromarray(np.dstack([IMG, np.zeros(IMG.shape[:2], np.uint8)])), lambda o: (o == 255).all()),
])
def test_image_valid(make, expect):
    out = Context(make()).image
    assert out.dtype == np.uint8 and out.shape == (16, 12, 3) and expect(out)
    assert not out.flags.writeable


def test_rgba_half_alpha_composites_on_white():
    rgba = np.zeros((8, 8, 4), np.float32)
    rgba[..., 3] = 0.5                                           # black at 50 % over white -> mid grey
    assert (to_rgb_uint8(rgba) == 128).all()


@pytest.mark.parametrize("make, match", [
    (lambda: np.zeros((16, 16, 2), np.uint8), "HxWx3"),
    (lambda: np.zeros((16, 16, 3, 1), np.uint8), "HxWx3"),
    (lambda: np.zeros((16,), np.uint8), "HxWx3"),
    (lambda: np.zeros((7, 16, 3), np.uint8), "at least 8 px"),
    (lambda: np.zeros((16, 4), np.uint8), "at least 8 px"),
    (lambda: np.full((16, 16, 3), np.nan, np.float32), "NaN or inf"),
    (lambda: np.full((16, 16, 3), np.inf, np.float32), "NaN or inf"),
    (lambda: np.full((16, 16, 3), 2.0, np.float32), r"in \[0, 1\]"),
    (lambda: np.full((16, 16, 3), -0.5, np.float32), r"in \[0, 1\]"),
    (lambda: np.zeros((16, 16, 3), bool), "dtype bool"),
    (lambda: np.zeros((16, 16, 3), np.int64), "dtype int64"),
    (lambda: [[0] * 16] * 16, "numpy array"),
    (lambda: "/no/such/file.png", "no image file"),
    (lambda: None, "numpy array"),
])
def test_image_invalid(make, match):
    with pytest.raises(InstructionError, match=match):
        Context(make())


def test_image_from_path(tmp_path):
    Image.fromarray(IMG).save(tmp_path / "a.png")
    assert np.array_equal(Context(tmp_path / "a.png").image, IMG)
    assert np.array_equal(Context(str(tmp_path / "a.png")).image, IMG)
    (tmp_path / "b.png").write_text("not an image")
    with pytest.raises(InstructionError, match="not a readable image"):
        Context(tmp_path / "b.png")


# ------------------------------------------------------------------------------------------------ JSON round trips
def _example():
    a = RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    b = RNG.integers(0, 256, (9, 31, 3), dtype=np.uint8)
    return Instruction("Recreate [ref#2] in the style of [ref#1].",
                       [Context(a, "style image", "style"), Context(b, "content image", "content")])


def test_save_load_round_trip(tmp_path):
    ins = _example()
    path = ins.save(tmp_path / "ex")
    assert path.name == "instruction.json" and (tmp_path / "ex" / "context_2.png").is_file()
    for src in (tmp_path / "ex", path):
        back = Instruction.load(src)
        assert back == ins
        assert back.text == ins.text and back.kinds == ["style", "content"]
        for c0, c1 in zip(ins.contexts, back.contexts):
            assert np.array_equal(c0.image, c1.image)
    assert Instruction.from_dict(ins.to_dict()) == ins
    Instruction("no contexts").save(tmp_path / "e")
    assert Instruction.load(tmp_path / "e") == Instruction("no contexts")


def test_eq_detects_pixel_change():
    ins = _example()
    img = ins.contexts[0].image.copy()
    img[0, 0, 0] ^= 1
    other = Instruction(ins.text, [Context(img, "style image", "style"), ins.contexts[1]])
    assert other != ins
    assert Instruction(ins.text, [Context(ins.contexts[0].image, "style image", "style"), ins.contexts[1]]) == ins
    assert Instruction(ins.text, [Context(ins.contexts[0].image, "style image", "subject"), ins.contexts[1]]) != ins


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("text"), "no 'text' key"),
    (lambda d: d.pop("contexts"), "no 'contexts' key"),
    (lambda d: d.update(text=5), "'text' must be a str"),
    (lambda d: d.update(contexts={}), "'contexts' must be a list"),
    (lambda d: d["contexts"].__setitem__(0, "x"), r"contexts\[0\] must be an object"),
    (lambda d: d["contexts"][0].pop("image"), r"contexts\[0\] has no 'image'"),
    (lambda d: d["contexts"][0].update(image="gone.png"), r"gone.png.*missing"),
    (lambda d: d["contexts"][0].update(kind="pose"), "unknown"),
    (lambda d: d["contexts"][0].update(kind=3), r"kind must be a string"),
    (lambda d: d["contexts"].pop(), r"refers to \[ref#2\]"),
    (lambda d: d["contexts"][1].update(text="[ref#1] x"), r"must start with \[ref#2\]"),
])
def test_damaged_json(tmp_path, edit, match):
    path = _example().save(tmp_path)
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(InstructionError, match=match):
        Instruction.load(tmp_path)


def test_damaged_files(tmp_path):
    path = _example().save(tmp_path)
    (tmp_path / "context_1.png").unlink()
    with pytest.raises(InstructionError, match="missing"):
        Instruction.load(path)
    path.write_text("{not json")
    with pytest.raises(InstructionError, match="not valid JSON"):
        Instruction.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(InstructionError, match="dict/JSON object"):
        Instruction.load(path)
    with pytest.raises(InstructionError, match="no instruction file"):
        Instruction.load(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ drawing
def test_draw():
    fig = _example().draw()
    assert len(fig.axes) == 3                       # text + one per context
    titles = [a.get_title() for a in fig.axes[1:]]
    assert titles == ["[ref#1] style image", "[ref#2] content image"]
    assert fig.axes[1].title.get_color() != fig.axes[2].title.get_color()
    assert len(Instruction("plain text").draw().axes) == 1


# ------------------------------------------------------------------------------------------------ batching
def test_batch_shapes_dtypes_ranges(tok):
    a = _example()
    b = Instruction("a red circle")
    c = Instruction("draw [ref#1]", [Context(np.ones((64, 64), np.float32), "a dog", "subject")])
    out = batch_instructions([a, b, c], tok, resolution=32, K=3)
    assert set(out) == {"text_ids", "ctx_image", "ctx_ids", "ctx_mask"}
    assert out["text_ids"].shape == (3, 64) and out["text_ids"].dtype == np.int32
    assert out["ctx_image"].shape == (3, 3, 32, 32, 3) and out["ctx_image"].dtype == np.float32
    assert out["ctx_ids"].shape == (3, 3, 32) and out["ctx_ids"].dtype == np.int32
    assert out["ctx_mask"].dtype == bool
    assert out["ctx_mask"].tolist() == [[True, True, False], [False] * 3, [True, False, False]]
    x = out["ctx_image"]
    assert x.min() >= -1 and x.max() <= 1
    assert (x[~out["ctx_mask"]] == 0).all() and (out["ctx_ids"][~out["ctx_mask"]] == 0).all()
    assert np.allclose(x[2, 0], 1.0)                 # a white float image -> +1
    # every filled slot's ids start with its own marker
    for bi, k in zip(*np.nonzero(out["ctx_mask"])):
        assert out["ctx_ids"][bi, k, 0] == tok.ref_id(k + 1)
    assert (out["text_ids"][1] == tok.encode("a red circle", 64)[0]).all()


def test_batch_resize_methods(tok):
    grad = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (64, 1, 3))
    small = batch_instructions([Instruction("x", [Context(grad)])], tok, 16, 1)["ctx_image"][0, 0]
    box = np.asarray(Image.fromarray(grad).resize((16, 16), Image.Resampling.BOX)) / 127.5 - 1
    assert np.allclose(small, box, atol=1e-6)
    big = batch_instructions([Instruction("x", [Context(grad[:8, :8])])], tok, 32, 1)["ctx_image"][0, 0]
    cub = np.asarray(Image.fromarray(grad[:8, :8]).resize((32, 32), Image.Resampling.BICUBIC)) / 127.5 - 1
    assert np.allclose(big, cub, atol=1e-6)


def test_batch_k_overflow(tok):
    ins = Instruction("x", [ctx() for _ in range(4)])
    with pytest.raises(InstructionError, match=r"4 contexts but the model has K=3.*K >= 4"):
        batch_instructions([ins], tok, 32, K=3)


@pytest.mark.parametrize("kw, match", [
    (dict(resolution=4), "resolution"), (dict(K=-1), "K="), (dict(text_len=0), "text_len"),
    (dict(resolution=32.0), "resolution"),
])
def test_batch_bad_args(tok, kw, match):
    args = dict(resolution=32, K=3) | kw
    with pytest.raises(InstructionError, match=match):
        batch_instructions([Instruction("x")], tok, **args)
    with pytest.raises(InstructionError, match="non-empty list"):
        batch_instructions([], tok, 32, 3)
    with pytest.raises(InstructionError, match="not an Instruction"):
        batch_instructions(["x"], tok, 32, 3)
