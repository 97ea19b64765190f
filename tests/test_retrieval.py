"""Retrieval: exact chunked top-k, near-duplicate removal, clusters, precision above chance."""
import dataclasses

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
    # most of a subject's neighbours show the same subject (0.19 before the foreground block: other subjects on
    # the same background), so that stage 1 can learn to read a subject from its neighbours
    assert subj["precision"] > 0.5 and subj["precision"] > 20 * subj["chance"]
    # styled scenes are a smaller share of the world v2 pool (subjects come in groups of 3-6 scenes): 0.66 at k=3
    assert style["precision"] > 5 * style["chance"] and style["precision"] > 0.6


def test_foreground_mask_finds_the_objects_not_the_background():
    """The embedding's foreground block counts the pixels that stand out from their row's background: on rendered
    scenes (every background, objects touching the edges included) they are the objects' pixels."""
    from iimagen import world as W

    rng = np.random.default_rng(0)
    ious = []
    for bg in W.BACKGROUND_NAMES:
        for _ in range(6):
            sc = dataclasses.replace(W.random_scene(rng), background=bg)
            r = W.render(sc, 32)
            truth = r.coverage.max(axis=0) > 0.5
            found = Rv.foreground_mask(r.image[None])[0]
            ious.append((truth & found).sum() / max((truth | found).sum(), 1))
    assert np.median(ious) > 0.7, np.round(ious, 2)
    plain = np.stack([W.background(bg, 32) for bg in W.BACKGROUND_NAMES])
    assert Rv.foreground_mask(plain).mean() < 0.02  # a bare background (the night's stars aside) is no foreground
