"""Retrieval: exact chunked top-k, near-duplicate removal, clusters, precision above chance."""
import numpy as np
import pytest

from iimagen import retrieval as Rv
from iimagen import tasks as T


def test_topk_exact_across_chunks():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(1000, 16)).astype(np.float32)
    q = rng.normal(size=(37, 16)).astype(np.float32)
    s, i = Rv.topk(q, keys, 5, chunk=128, query_chunk=16)  # several key and query chunks, ragged ends
    ref = np.argsort(-(q @ keys.T), axis=1)[:, :5]
    assert np.array_equal(i, ref)
    assert np.allclose(s, np.take_along_axis(q @ keys.T, ref, 1), atol=1e-5)
    with pytest.raises(ValueError):
        Rv.topk(q, keys, 0)


def test_embed_unit_norm_and_dedup():
    imgs = np.stack([ex.target for ex in T.sample("text_to_image", 6, 0, 32)])
    e = Rv.embed(imgs)
    assert e.shape == (6, Rv.DIM) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    e2 = np.concatenate([e, e[:2]])  # exact duplicates of items 0, 1 at 6, 7
    assert Rv.dedup(e2, [0, 6, 1, 7, 2], threshold=0.99) == [0, 1, 2]
    with pytest.raises(ValueError, match="uint8"):
        Rv.embed(imgs.astype(np.float32))


def test_clusters_have_no_duplicates_and_precision_above_chance():
    pool = T.RetrievalPool(768, seed=1)
    for c in pool.clusters[:50]:
        sims = pool.emb[c] @ pool.emb[c].T
        assert len(set(c)) == 5 and (sims[~np.eye(5, dtype=bool)] < 0.97).all()
    subj = Rv.precision_at_k(pool.emb, pool.subject, k=3)
    style = Rv.precision_at_k(pool.emb, pool.style, k=3)
    assert subj["precision"] > 5 * subj["chance"]
    assert style["precision"] > 5 * style["chance"] and style["precision"] > 0.5
