"""Templates (paper §3.2, App. A.3.2): every template of every task renders cleanly into a valid instruction."""
import json
import re

import numpy as np
import pytest

from iimagen import templates as T
from iimagen.instruction import Context, Instruction, find_markers

IMG = np.zeros((8, 8, 3), np.uint8)
CAPTION = "a small red circle on the left."


def _refs(task):
    return [f"[ref#{i}] {kind} image" for i, kind in enumerate(T.spec(task)["refs"], start=1)]


def test_task_lists_match_files():
    tasks = T.load()["tasks"]
    assert set(tasks) == set(T.TASKS) | set(T.ZERO_SHOT)
    assert not any(tasks[t]["zero_shot"] for t in T.TASKS) and all(tasks[t]["zero_shot"] for t in T.ZERO_SHOT)
    assert set(T.load()["prefixes"]) == set(T.CONTROLS)


@pytest.mark.parametrize("task", T.TASKS)
def test_enough_distinct_templates(task):
    ts = T.load()["tasks"][task]["templates"]
    assert len(ts) >= 25 and len(set(ts)) == len(ts)
    # strongly varied: no two templates share their first four words
    starts = [" ".join(re.sub(r"\{\w+\}", "X", t).split()[:4]) for t in ts]
    assert len(set(starts)) >= 0.9 * len(ts)


@pytest.mark.parametrize("task", T.TASKS + T.ZERO_SHOT)
def test_every_template_uses_exactly_its_fields(task):
    s = T.spec(task)
    want = {f"ref{i}" for i in range(1, len(s["refs"]) + 1)} | ({"caption"} if s["caption"] else set())
    for t in T.load()["tasks"][task]["templates"]:
        assert set(re.findall(r"\{(\w+)\}", t)) == want, t
        assert "[ref" not in t                       # markers come only from the refs


@pytest.mark.parametrize("task", T.TASKS + T.ZERO_SHOT)
def test_every_template_renders_to_a_valid_instruction(task):
    s = T.spec(task)
    refs = _refs(task)
    for t in T.load()["tasks"][task]["templates"]:
        text = T.fill(t, CAPTION if s["caption"] else None, refs)
        assert "{" not in text and "}" not in text
        assert sorted({n for _, _, n in find_markers(text)}) == list(range(1, len(refs) + 1))
        ins = Instruction(text, [Context(IMG, r, "reference") for r in refs])   # raises if a marker is bad
        assert ins.markers == list(range(1, len(refs) + 1))
        if s["caption"]:
            assert "a small red circle on the left" in text


def test_render_random_and_reproducible():
    a = [T.render("subject", np.random.default_rng(s), caption=CAPTION, refs=["[ref#1] a zorb"]) for s in range(40)]
    b = [T.render("subject", np.random.default_rng(s), caption=CAPTION, refs=["[ref#1] a zorb"]) for s in range(40)]
    assert a == b and len(set(a)) > 15
    assert T.render("subject", 3, caption=CAPTION, refs=["[ref#1] a zorb"]) == a[3]   # an int seed works too


@pytest.mark.parametrize("task, control", [("edge_to_image", "edge"), ("depth_to_image", "depth"),
                                           ("mask_to_image", "mask"), ("sketch_to_image", "sketch")])
def test_control_prefix(task, control):
    prefix = T.load()["prefixes"][control]
    text = T.render(task, 0, caption=CAPTION, refs=["[ref#1] map"])
    assert text.startswith(prefix + " ")
    assert not T.render(task, 0, caption=CAPTION, refs=["[ref#1] map"], prefix=False).startswith(prefix)
    text = T.render("control_style", 0, caption=CAPTION, refs=_refs("control_style"), control=control)
    assert text.startswith(prefix)
    assert not T.render("text_to_image", 0, caption=CAPTION).startswith(prefix)


def test_style_transfer_has_no_caption():
    text = T.render("style_transfer", 1, refs=["[ref#1] mosaic style", "[ref#2] content image"])
    assert "[ref#1] mosaic style" in text and "[ref#2] content image" in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="text_to_imag", caption="x"), "unknown; use one of text_to_image"),
    (dict(task="subject", caption="x"), "refs has 0 items; give exactly 1"),
    (dict(task="subject", caption="x", refs=["a", "b"]), "give exactly 1"),
    (dict(task="subject", refs=["[ref#1] a"]), "caption must be a non-empty string"),
    (dict(task="subject", caption="  ", refs=["[ref#1] a"]), "caption must be"),
    (dict(task="subject", caption="x", refs=[""]), r"refs\[0\] must be a non-empty string"),
    (dict(task="style_transfer", caption="x", refs=["a", "b"]), "takes no caption"),
    (dict(task="control_style", caption="x", refs=["a", "b"], control="pose"), "control='pose'"),
])
def test_render_errors(kwargs, match):
    task = kwargs.pop("task")
    with pytest.raises(T.TemplateError, match=match):
        T.render(task, np.random.default_rng(0), **kwargs)
    assert issubclass(T.TemplateError, ValueError)


def test_fill_missing_field_is_an_error():
    with pytest.raises(T.TemplateError, match=r"needs \{ref2\}"):
        T.fill("{ref1} and {ref2}", refs=["[ref#1] a"])


def test_caption_trailing_period_only_kept_at_the_end():
    assert T.fill("Draw {caption}.", "a dog.") == "Draw a dog."
    assert T.fill("Caption: {caption}", "a dog.") == "Caption: a dog."


def test_files_are_json_with_about():
    for name in (T.TRAIN_FILE, T.ZERO_SHOT_FILE):
        d = json.loads((T.paths.TEMPLATES / name).read_text())
        assert "about" in d and d["tasks"]
