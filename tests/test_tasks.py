"""Tasks: determinism, zero-shot exclusion, mixture ratios, clear errors, what each task's example holds."""
import re

import numpy as np
import pytest

from iimagen import tasks as T
from iimagen import world as W


def test_task_names_stable():
    assert T.TASK_NAMES[:8] == ("text_to_image", "edge_to_image", "depth_to_image", "mask_to_image",
                                "sketch_to_image", "subject", "styled_generation", "style_transfer")
    assert set(T.ZERO_SHOT_TASKS) == {"style_subject", "multi_subject", "control_subject", "control_style"}
    assert not set(T.ZERO_SHOT_TASKS) & set(T.TRAINING_TASKS)
    assert T.task_id("subject") == 5


def test_sample_deterministic_same_bytes():
    a = T.sample("subject", 2, seed=4, resolution=32)
    b = T.sample("subject", 2, seed=4, resolution=32)
    for x, y in zip(a, b):
        assert x.target.tobytes() == y.target.tobytes() and x.instruction == y.instruction
    c = T.sample("subject", 2, seed=5, resolution=32)
    assert a[0].target.tobytes() != c[0].target.tobytes()


def test_bad_task_and_resolution():
    with pytest.raises(ValueError, match="text_to_image.*style_transfer"):
        T.sample("txt2img", 1, 0, 32)
    with pytest.raises(ValueError, match="32, 64, 128"):
        T.sample("subject", 1, 0, 100)
    with pytest.raises(ValueError, match="split"):
        T.sample("subject", 1, 0, 32, split="val")


@pytest.mark.parametrize("task", T.ZERO_SHOT_TASKS)
def test_training_refuses_zero_shot(task):
    with pytest.raises(ValueError, match="zero-shot"):
        T.draw_spec(task, np.random.default_rng(0), training=True)
    spec = T.draw_spec(task, np.random.default_rng(0))  # evaluation may draw it
    assert T.is_zero_shot(spec)
    with pytest.raises(ValueError, match="zero-shot"):
        T.check_training(spec)


def test_no_zero_shot_or_held_out_in_10000_training_draws():
    rng = np.random.default_rng(0)
    counts = {}
    m = T.check_mixture(None)
    for _ in range(10_000):
        s = T.draw_mixture_spec(rng, m)
        assert not T.is_zero_shot(s)
        c = T.composition(s)
        assert len(c["subjects"]) <= 1 and not (c["subjects"] and (c["style"] or c["control"]))
        assert not any(i.held_out for sc in [s.scene] + [r.scene for r in s.refs] for i in sc.identities)
        for st in [s.style] + [r.style for r in s.refs]:
            assert not (st.held_out if isinstance(st, W.Style) else st in W.HELD_OUT_STYLES)
        key = "artwork" if s.meta.get("artwork") else s.task
        counts[key] = counts.get(key, 0) + 1
    for src, w in T.STAGE2_MIXTURE.items():  # mixture ratios within 3 standard errors
        p = counts.get(src, 0) / 10_000
        assert abs(p - w) < 3 * np.sqrt(w * (1 - w) / 10_000) + 1e-3, (src, p, w)


def test_configurable_mixture():
    rng = np.random.default_rng(1)
    tasks = {T.draw_mixture_spec(rng, {"subject": 1, "style_transfer": 1}).task for _ in range(50)}
    assert tasks == {"subject", "style_transfer"}
    with pytest.raises(ValueError, match="mixture"):
        T.check_mixture({"multi_subject": 1.0})


def test_examples_of_each_task():
    for task in T.STAGE2_TASKS + T.ZERO_SHOT_TASKS:
        ex = T.sample(task, 1, 3, 32)[0]
        ins = ex.instruction
        assert ex.target.shape == (32, 32, 3) and ex.target.dtype == np.uint8
        assert ex.truth["task"] == task and ex.truth["objects"]
        if task in T.CONTROL_TASKS:
            assert ins.kinds == [T.CONTROL_TASKS[task]]
            if task == "mask_to_image":  # the mask is the target's silhouettes
                r = W.render(T.draw_spec(task, np.random.default_rng([3, T.task_id(task)])).scene, 32)
                assert np.array_equal(ins.contexts[0].image, W.mask_map(r))
        if task == "subject":
            key = ex.truth["subjects"][0]
            name = W.subject_name(ex.spec.scene.identities[0])
            assert 1 <= len(ins.contexts) <= 3 and all(c.kind == "subject" and name in c.text for c in ins.contexts)
            assert name in ins.text and all(r["subjects"][0] == key for r in ex.truth["refs"])
        if task == "style_transfer":
            assert ins.kinds == ["style", "content"] and ex.truth["caption"] is None
            for o in ex.truth["objects"]:  # no content words in the text
                assert o["shape"] not in ins.text and (o["colour"] or "-") not in ins.text
        if task == "styled_generation":
            assert ins.kinds == ["style"] and ex.truth["style"] == ex.truth["refs"][0]["style"]
            assert not W.Style.from_params(ex.truth["styles"][ex.truth["style"]]).held_out
        if task == "multi_subject":
            assert len(set(ex.truth["subjects"])) == 2
    test = T.sample("subject", 3, 0, 32, split="test")
    assert all(W.Subject.from_params(e.truth["identities"][e.truth["subjects"][0]]).held_out for e in test)


def test_retrieval_examples_follow_stage1():
    pool = T.RetrievalPool(256, seed=0)
    assert pool.clusters.shape[1] == 5 and len(pool.clusters) > 50
    exs = T.sample("retrieval", 40, 0, 32, pool=pool)
    drops = [e.drop for e in exs]
    full = [e for e in exs if e.drop is None]
    assert full and all(len(e.instruction.contexts) == 3 for e in full)
    assert all(c.kind == "reference" for e in full for c in e.instruction.contexts)
    assert all(len(e.instruction.contexts) == 0 for e in exs if e.drop)
    # raw captions: the payload is the target caption, contexts are the neighbours' captions
    e = full[0]
    items = e.truth["pool_items"]
    assert e.instruction.text == pool.items[items[0]][2]
    assert [c.text.split("] ", 1)[1] for c in e.instruction.contexts] == [pool.items[i][2] for i in items[1:]]
    assert len(set(items)) == 4
    assert drops.count(None) > 20


def test_stage1_training_calls_each_subject_by_one_nonce_name_in_target_and_neighbours():
    """Stage-1 training (`anonymous=True`) never shows a subject's own name: each subject of an example gets one
    nonce name, the same in the target's caption and in every neighbour's that shows it, so only the neighbours'
    pixels say what it looks like. Everything else is the named example's: scenes, captions, seed, dropout."""
    pool = T.RetrievalPool(512, seed=0)
    shared = 0
    for c in range(0, len(pool.clusters), 5):
        named, idx = pool.spec(c, np.random.default_rng(c))
        anon, idx2 = pool.spec(c, np.random.default_rng(c), anonymous=True)
        assert idx == idx2 and (named.seed, named.drop, named.scene) == (anon.seed, anon.drop, anon.scene)
        texts = [anon.text] + [r.text for r in anon.refs]
        called = {}
        for i, text, named_text in zip(idx, texts, [named.text] + [r.text for r in named.refs]):
            subj = pool.items[i][0].subjects
            if not subj:
                assert text == named_text
                continue
            own = W.subject_name(pool.items[i][0].identities[0])
            before, after = re.split(rf"\b{own}\b", named_text)  # the caption names its subject once
            assert text.startswith(before) and text.endswith(after)
            nonce = text[len(before):len(text) - len(after)]
            assert nonce.isalpha() and nonce != own
            assert called.setdefault(subj[0], nonce) == nonce  # one name per subject within the example
        shared += pool.subject[idx[0]] != "" and pool.subject[idx[0]] in pool.subject[idx[1:]]
    assert shared > 10  # the target's subject is in its neighbours often enough to be read from them


def test_write_examples(tmp_path):
    import json

    from iimagen.instruction import Instruction

    folder = T.write_examples(tmp_path)
    index = json.loads((folder / "index.json").read_text())["examples"]
    assert [e["task"] for e in index] == list(T.TASK_NAMES)
    ins = Instruction.load(folder / "control_style")
    assert ins.kinds[1] == "style" and ins.contexts[0].image.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="overwrite=True"):  # the examples are replaced only when asked
        T.write_examples(tmp_path)
    assert T.write_examples(tmp_path, overwrite=True) == folder


def test_training_names_subjects_with_nonce_names_and_never_names_a_style_reference():
    """Training text never names a reference's identity: the subject is called by a nonce name drawn per example
    (the same in the reference text and the caption) and a style reference is a "style image"."""
    rng = np.random.default_rng(0)
    said = set()
    for _ in range(60):
        s = T.draw_spec("subject", rng, training=True)
        real = s.scene.subjects[0]
        nonce = s.refs[0].text
        assert not s.scene.identities[0].held_out and nonce not in W.SUBJECT_NAMES
        assert nonce != W.subject_name(s.scene.identities[0])
        assert all(r.text == nonce and r.scene.subjects == [real] for r in s.refs)
        assert nonce in s.caption and nonce in s.text
        said.add(nonce)
    assert len(said) > 50  # a new name for (nearly) every example, not one alias per subject
    for task in ("styled_generation", "style_transfer"):
        for _ in range(20):
            s = T.draw_spec(task, rng, training=True)
            assert s.refs[0].text == "style image" and isinstance(s.style, W.Style)
    ms = T.draw_spec("multi_subject", np.random.default_rng(1), anonymous=True)
    assert len({r.text for r in ms.refs}) == 2 and not {r.text for r in ms.refs} & set(W.SUBJECT_NAMES)


def test_named_draws_are_unchanged_by_the_nonce_option():
    """Evaluation draws call a subject by the name its key fixes (`world.subject_name`), and `anonymous=True` changes
    only the names: same scenes. A procedural style has no name: its reference is always a "style image"."""
    named = T.draw_spec("subject", np.random.default_rng(5), split="test")
    own = W.subject_name(named.scene.identities[0])
    assert named.refs[0].text == own and own in named.text
    anon = T.draw_spec("subject", np.random.default_rng(5), split="test", anonymous=True)
    assert anon.scene == named.scene and anon.refs[0].text != own
    words = {T.draw_spec("styled_generation", np.random.default_rng(k)).refs[0].text for k in range(20)}
    assert words == {"style image"}
    a, b = (T.draw_spec("control_style", np.random.default_rng(2), anonymous=x) for x in (False, True))
    assert a == b  # no subject, no style name in the text: nothing to anonymise
    ex = T.sample("subject", 2, 7, 32, anonymous=True)
    assert all(c.text != W.subject_name(e.spec.scene.identities[0]) for e in ex for c in e.instruction.contexts)


@pytest.mark.parametrize("kw, match", [({"task": "painting"}, "task='painting' is unknown"),
                                       ({"split": "val"}, "split='val' is unknown"),
                                       ({"seed": -1}, "seed=-1 must be an int >= 0"),
                                       ({"seed": "a"}, "seed='a' must be an int"),
                                       ({"resolution": 48}, "resolution=48 is not supported")])
def test_bad_task_split_seed_or_resolution_is_a_clear_error(kw, match):
    args = {"task": "subject", "n": 1, "seed": 0, "resolution": 32, **kw}
    with pytest.raises(ValueError, match=match):
        T.sample(**args)
