"""The loader: contract shapes, determinism, resume, host shards, variants."""
import numpy as np
import pytest

from iimagen import tasks as T
from iimagen.data import DataError, Loader

KW = dict(process_index=0, process_count=1)


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
    with pytest.raises(DataError, match="stage"):
        Loader(3, 4, 32, **KW)
    with pytest.raises(ValueError, match="32, 64, 128"):
        Loader(2, 4, 40, **KW)
