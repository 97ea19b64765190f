"""The loader: contract shapes, determinism, resume, host shards, variants, worker processes and their shutdown."""
import gc
import os
import re
import time

import numpy as np
import pytest

from iimagen import tasks as T
from iimagen.data import DataError, Loader

KW = dict(process_index=0, process_count=1, workers=0)


def _eq(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_stage2_batch_contract_and_resume():
    L = Loader(2, 8, 32, seed=3, **KW)
    it = iter(L)
    got = [next(it) for _ in range(6)]
    assert [s for s, _ in got] == list(range(6))
    b = got[0][1]
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["image"].min() >= -1 and b["image"].max() <= 1
    assert b["text_ids"].shape == (8, 64) and b["text_ids"].dtype == np.int32
    assert b["ctx_image"].shape == (8, 3, 32, 32, 3) and b["ctx_ids"].shape == (8, 3, 32)
    assert b["ctx_mask"].dtype == bool and b["task_id"].dtype == np.int32
    assert not (b["ctx_image"][~b["ctx_mask"]]).any() and not (b["ctx_ids"][~b["ctx_mask"]]).any()
    step, b5 = next(iter(Loader(2, 8, 32, seed=3, start_step=5, **KW)))
    assert step == 5 and _eq(b5, got[5][1])
    assert not _eq(got[0][1], Loader(2, 8, 32, seed=4, **KW).batch(0))


def test_hosts_read_distinct_shards_of_the_same_global_batch():
    full = Loader(0, 8, 32, seed=1, **KW).batch(2)
    h0 = Loader(0, 8, 32, seed=1, process_index=0, process_count=2).batch(2)
    h1 = Loader(0, 8, 32, seed=1, process_index=1, process_count=2).batch(2)
    assert np.array_equal(np.concatenate([h0["image"], h1["image"]]), full["image"])
    assert not np.array_equal(h0["image"], h1["image"])


def test_stage0_and_stage1():
    b = Loader(0, 16, 32, seed=0, **KW).batch(0)
    assert (b["task_id"] == T.task_id("text_to_image")).all() and not b["ctx_mask"].any()
    L1 = Loader(1, 16, 32, seed=0, pool_size=256, **KW)
    b = L1.batch(0)
    assert (b["task_id"] == T.task_id("retrieval")).all()
    n_ctx = b["ctx_mask"].sum(1)
    assert set(n_ctx.tolist()) <= {0, 3} and (n_ctx == 3).any()
    dropped_all = (b["text_ids"] == 0).all(1)
    assert (n_ctx[dropped_all] == 0).all()


def test_variants():
    b = Loader(2, 16, 32, seed=0, variant="single_task=style_transfer", **KW).batch(0)
    assert (b["task_id"] == T.task_id("style_transfer")).all()
    L = Loader(2, 16, 32, seed=0, variant="no_instruction", mixture={"style_transfer": 1, "edge_to_image": 1}, **KW)
    b = L.batch(0)
    st = b["task_id"] == T.task_id("style_transfer")
    assert st.any() and (b["text_ids"][st] == 0).all()  # no text at all for style transfer
    ex = L.example(0, int(np.nonzero(~st)[0][0]))
    assert np.array_equal(b["text_ids"][~st][0], L.tok.encode([ex.truth["caption"]], 64)[0])
    for bad in ("single_task=multi_subject", "nope"):
        with pytest.raises(DataError, match="single_task"):
            Loader(2, 4, 32, variant=bad, **KW)
    with pytest.raises(DataError, match="workers"):
        Loader(2, 4, 32, process_index=0, process_count=1, workers=-1)
    with pytest.raises(DataError, match="stage"):
        Loader(3, 4, 32, **KW)
    with pytest.raises(ValueError, match="32, 64, 128"):
        Loader(2, 4, 40, **KW)


def test_batch_matches_batch_instructions():
    from iimagen.instruction import batch_instructions

    L = Loader(2, 16, 32, seed=2, **KW)
    b = L.batch(1)
    exs = [L.example(1, j) for j in range(16)]
    ref = batch_instructions([e.instruction for e in exs], L.tok, 32, 3)
    for k in ("ctx_image", "ctx_ids", "ctx_mask"):
        assert np.array_equal(b[k], ref[k]) and b[k].dtype == ref[k].dtype, k
    kept = np.asarray([e.drop != "all" for e in exs])
    assert np.array_equal(b["text_ids"][kept], ref["text_ids"][kept])
    assert np.array_equal(b["image"], np.stack([e.target for e in exs]).astype(np.float32) / 127.5 - 1)


def _gone(pids, timeout=10.0):
    """True once no process with these pids exists (reaped: a zombie would still answer kill(pid, 0))."""
    t = time.time()
    while time.time() - t < timeout:
        alive = []
        for p in pids:
            try:
                os.kill(p, 0)
                alive.append(p)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.1)
    return False


def test_workers_give_the_same_batches_in_order_and_stop_cleanly():
    L0 = Loader(1, 8, 32, seed=2, pool_size=256, **KW)
    kw = dict(KW, workers=2)
    L2 = Loader(1, 8, 32, seed=2, pool=L0.pool, start_step=3, steps=5, **kw)
    got = list(L2)  # runs to the end: the workers exit and are reaped
    assert [s for s, _ in got] == [3, 4, 5, 6, 7]
    for s, b in got:
        assert _eq(b, L0.batch(s)), s
    assert _gone(L2.pids)
    # close(): the trainer breaks out of `for step, batch in loader` and calls loader.close()
    L = Loader(2, 4, 32, seed=1, **kw)
    for step, b in L:
        assert _eq(b, Loader(2, 4, 32, seed=1, **KW).batch(step))
        break
    pids = L.pids
    assert len(pids) == 2 and not _gone(pids, timeout=0)
    L.close()
    assert _gone(pids)
    # garbage collection of a half-read iterator
    L = Loader(2, 4, 32, seed=1, **dict(KW, workers=1))
    it = iter(L)
    next(it)
    pids = L.pids
    del it
    gc.collect()
    assert _gone(pids)
    # an exception (Ctrl-C) in the loop body
    with pytest.raises(KeyboardInterrupt):
        for _ in L:
            pids = L.pids
            raise KeyboardInterrupt
    assert _gone(pids)


def test_worker_errors_surface_in_the_parent():
    L = Loader(2, 4, 32, seed=0, K=1, process_index=0, process_count=1, workers=1)  # K=1 < contexts of some tasks
    with pytest.raises(DataError, match="K="):
        for _ in L:
            pass
    assert _gone(L.pids)


def _own_name_in(text: str, spec) -> bool:
    """Does `text` call one of the spec's subjects by its own name (the one its key fixes)?"""
    from iimagen import world as W

    names = {W.subject_name(i) for sc in [spec.scene] + [r.scene for r in spec.refs] for i in sc.identities}
    return bool(set(re.findall(r"[a-z]+", text)) & names)


def test_stage2_loader_uses_nonce_names_unless_asked_for_world_names():
    """The default loader never shows the name a subject's key fixes (`world.subject_name`); `anonymous=False`
    (train --names world) does."""
    def names_shown(anonymous):
        L = Loader(2, 16, 32, seed=0, variant="single_task=subject", anonymous=anonymous, **KW)
        exs = [L.example(0, j, with_truth=False) for j in range(16)]
        return [_own_name_in(ex.instruction.text, ex.spec) for ex in exs]

    assert not any(names_shown(True))
    assert all(names_shown(False))


def test_stage1_loader_uses_nonce_names_unless_asked_for_world_names():
    from iimagen import tasks as T

    pool = T.RetrievalPool(256, seed=0)

    def names_shown(anonymous):
        L = Loader(1, 8, 32, seed=0, pool=pool, anonymous=anonymous, **KW)
        exs = [ex for ex in (L.example(s, j, with_truth=False) for s in range(8) for j in range(8)) if ex.drop is None]
        return sum(_own_name_in(" ".join([ex.instruction.text] + [c.text for c in ex.instruction.contexts]), ex.spec)
                   for ex in exs)

    assert names_shown(True) == 0 and names_shown(False) > 5


def test_fingerprint_tells_data_apart():
    """Loader.fingerprint: the same for the same data, other for another seed, naming or variant."""
    fp = lambda **kw: Loader(**{"stage": 2, "batch_size": 4, "resolution": 32, "workers": 0, **kw}).fingerprint()
    assert fp() == fp()
    assert len({fp(), fp(seed=1), fp(anonymous=False), fp(variant="no_instruction")}) == 4
    # another mixture, even one whose first examples come out alike, is other data; Table 1 spelt out is not
    assert fp(mixture={**T.STAGE2_MIXTURE, "subject": 0.41}) != fp() == fp(mixture=dict(T.STAGE2_MIXTURE))
    pool = dict(stage=1, pool_size=64)
    assert fp(**pool) == fp(**pool) != fp(**pool, anonymous=False)


def test_ref_drop_masks_one_reference_and_changes_nothing_else():
    """Stage 2's per-reference dropout: with p = 1 every example with references loses exactly one (its slot empty,
    its image zero); every other array is the same bytes as without it; p = 0 is the default; other stages and
    probabilities are clear errors."""
    kw = dict(stage=2, batch_size=16, resolution=32, seed=0, **KW)
    plain, dropped = Loader(**kw)._batch_u8(3), Loader(**kw, ref_drop=1.0)._batch_u8(3)
    assert _eq(Loader(**kw, ref_drop=0.0)._batch_u8(3), plain)
    n0, n1 = plain["ctx_mask"].sum(1), dropped["ctx_mask"].sum(1)
    assert (n0 > 1).any() and list(n1) == [max(n - 1, 0) for n in n0]
    assert not (dropped["ctx_mask"] & ~plain["ctx_mask"]).any()  # only live slots are dropped
    gone = plain["ctx_mask"] & ~dropped["ctx_mask"]
    assert (dropped["ctx_image"][gone] == 0).all()
    assert np.array_equal(dropped["ctx_image"][~gone], plain["ctx_image"][~gone])
    assert all(np.array_equal(plain[k], dropped[k]) for k in plain if k not in ("ctx_mask", "ctx_image"))
    half = Loader(**kw, ref_drop=0.5)
    assert 0 < (half._batch_u8(3)["ctx_mask"].sum(1) < n0).sum() < (n0 > 0).sum()
    assert half.fingerprint() != Loader(**kw).fingerprint()
    with pytest.raises(DataError, match="stage 2 only"):
        Loader(stage=0, batch_size=4, resolution=32, ref_drop=0.1, **KW)
    with pytest.raises(DataError, match="probability"):
        Loader(**kw, ref_drop=1.5)
