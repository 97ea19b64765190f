"""The synthetic world: determinism, vocabulary sizes, ground truth agrees with pixels, controls."""
import numpy as np
import pytest

from iimagen import world as W


def test_vocabulary_sizes():
    assert len(W.SHAPES) >= 8 and len(W.COLOURS) >= 8 and len(W.BACKGROUNDS) >= 6
    assert len(W.SUBJECTS) >= 12 and len(set(W.SUBJECT_NAMES)) == len(W.SUBJECTS)  # the named gallery
    assert any(s.held_out for s in W.SUBJECTS) and not all(s.held_out for s in W.SUBJECTS)
    assert len(W.STYLES) >= 12 and len(W.HELD_OUT_STYLES) >= 3
    assert not set(W.HELD_OUT_STYLES) & set(W.TRAIN_STYLES)
    assert len(W.PHRASINGS) >= 10
    # the family's discrete factors alone give 210 looks; colours, frequency and angle are continuous on top
    assert len(W.BODY_SHAPES) * len(W.PATTERNS) * len(W.PARTS) >= 200


@pytest.mark.parametrize("R", W.RESOLUTIONS)
def test_render_deterministic(R):
    a = W.random_scene(np.random.default_rng(3), subjects=[W.draw_subject(np.random.default_rng(1))])
    b = W.random_scene(np.random.default_rng(3), subjects=[W.draw_subject(np.random.default_rng(1))])
    assert a == b
    ia, _ = W.make(a, R, style="mosaic")
    ib, _ = W.make(b, R, style="mosaic")
    assert ia.dtype == np.uint8 and ia.shape == (R, R, 3) and ia.tobytes() == ib.tobytes()


def test_bad_resolution_and_style():
    s = W.random_scene(np.random.default_rng(0))
    with pytest.raises(ValueError, match="32, 64, 128"):
        W.render(s, 48)
    with pytest.raises(ValueError, match="mosaic"):
        W.make(s, 32, style="cubism")


def _two_overlapping():
    back = W.Obj("square", "red", None, 0.4, 0.5, 0.25)
    front = W.Obj("circle", "blue", None, 0.6, 0.5, 0.2)
    return W.Scene("white", (back, front))


def test_mask_is_union_of_silhouettes_and_colour_matches():
    r = W.render(_two_overlapping(), 64)
    mask = W.mask_map(r)[..., 0] > 127
    assert np.array_equal(mask, r.coverage.max(0) >= 0.5)
    # interior pixels of the front circle are exactly blue, of the back square (not covered) exactly red
    full_front = r.coverage[1] == 1
    only_back = (r.coverage[0] == 1) & (r.coverage[1] == 0)
    assert np.allclose(r.image[full_front], W.COLOURS["blue"], atol=1e-5)
    assert np.allclose(r.image[only_back], W.COLOURS["red"], atol=1e-5)
    assert np.allclose(r.image[r.coverage.max(0) == 0], W.background("white", 64)[r.coverage.max(0) == 0])


def test_depth_order_of_overlapping_objects():
    r = W.render(_two_overlapping(), 64)
    d = W.depth_map(r)[..., 0].astype(int)
    overlap = (r.coverage[0] == 1) & (r.coverage[1] == 1)
    only_back = (r.coverage[0] == 1) & (r.coverage[1] == 0)
    assert overlap.any() and only_back.any()
    assert np.all(d[overlap] == round(W.depth_value(1) * 255))  # nearer object wins where they overlap
    assert np.all(d[only_back] == round(W.depth_value(0) * 255))
    assert d[overlap].min() > d[only_back].max() > d[r.coverage.max(0) == 0].max()  # nearer = brighter


def test_truth_boxes_and_visibility():
    r = W.render(_two_overlapping(), 64)
    t = W.truth(r)
    back, front = t["objects"]
    assert front["z"] == 1 and front["colour"] == "blue" and front["visible"] == pytest.approx(1.0)
    assert 0 < back["visible"] < 1
    x0, y0, x1, y1 = front["box"]
    assert x0 == pytest.approx(0.6 - 0.2 * 0.95, abs=2 / 64) and x1 == pytest.approx(0.6 + 0.2 * 0.95, abs=2 / 64)
    assert front["position"] == "in the centre" and back["size"] == "large"


def test_controls_shapes_and_sketch_edges():
    r = W.render(W.random_scene(np.random.default_rng(1), n_objects=3), 32)
    for kind in W.CONTROLS:
        m = W.control(r, kind, np.random.default_rng(0))
        assert m.shape == (32, 32, 3) and m.dtype == np.uint8
    sk = W.sketch_map(r)[..., 0]
    ids = W.region_ids(r)
    # every contour pixel sits on a boundary between two different regions
    line = sk < 128
    assert line.any()
    boundary = np.zeros_like(line)
    boundary[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    boundary[1:] |= ids[1:] != ids[:-1]
    assert np.array_equal(line, boundary)
    e1 = W.edge_map(r, np.random.default_rng(0), source="mask", dilation=0)
    e2 = W.edge_map(r, np.random.default_rng(0), source="mask", dilation=1)
    assert (e2 >= e1).all() and (e2 > 127).sum() > (e1 > 127).sum() > 0


def test_styles_change_every_scene_and_differ():
    r = W.render(W.random_scene(np.random.default_rng(2)), 32)
    outs = {s: W.to_uint8(W.stylize(r.image, s)) for s in W.STYLES}
    base = W.to_uint8(r.image)
    for s, o in outs.items():
        assert np.abs(o.astype(int) - base).mean() > 3, s
    names = list(outs)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            assert np.abs(outs[names[i]].astype(int) - outs[names[j]]).mean() > 2, (names[i], names[j])


def test_captions_name_the_scene():
    rng = np.random.default_rng(0)
    s = W.random_scene(rng, subjects=[W.SUBJECTS[5]])
    texts = {W.caption(s, rng) for _ in range(60)}
    assert len(texts) >= 10
    assert all(W.SUBJECT_NAMES[5] in t for t in texts)
    art = W.caption(s, rng, style="halftone")
    assert "halftone" in art
    corpus = " ".join(W.caption_corpus())
    for word in list(W.SHAPES) + list(W.COLOURS) + list(W.SUBJECT_NAMES) + list(W.STYLES) + list(W.BACKGROUNDS.values()):
        assert word in corpus


# ------------------------------------------------------------------------------------------------ world v2
def test_families_are_deterministic_in_the_seed():
    for draw in (W.draw_subject, W.draw_style):
        for split in W.SPLITS:
            a = [draw(np.random.default_rng(4), split) for _ in range(3)]
            b = [draw(np.random.default_rng(4), split) for _ in range(3)]
            assert a == b and [x.key for x in a] == [x.key for x in b]
        assert draw(np.random.default_rng(4)) != draw(np.random.default_rng(5))


def test_training_draws_never_reach_the_held_out_regions():
    """10 k training draws of each family: no held-out identity or style; every test draw is held out."""
    rng = np.random.default_rng(0)
    subs = [W.draw_subject(rng, "train") for _ in range(10_000)]
    styles = [W.draw_style(rng, "train") for _ in range(10_000)]
    assert not any(s.held_out for s in subs) and not any(s.held_out for s in styles)
    assert all(W.draw_subject(rng, "test").held_out for _ in range(500))
    assert all(W.draw_style(rng, "test").held_out for _ in range(500))
    # the region is a combination: each of its factors alone is seen in training
    lo, hi = W.HELD_OUT_REGION["hue"]
    assert any(lo <= s.hsv[0][0] < hi for s in subs) and any(s.pattern in W.HELD_OUT_REGION["patterns"] for s in subs)
    # identities do not recur: 10 k fresh draws, 10 k distinct keys
    assert len({s.key for s in subs}) == len(subs) and len({s.key for s in styles}) == len(styles)


def test_fresh_identities_look_different_at_32px():
    """300 fresh identities in one fixed pose at 32 px: every pair differs visibly (mean |diff| > 2 of 255)."""
    rng = np.random.default_rng(1)
    imgs = np.stack([W.to_uint8(W.render(W.Scene("white", (W.Obj(s.shape, None, s, 0.5, 0.5, 0.3),)), 32).image)
                     for s in (W.draw_subject(rng) for _ in range(300))]).reshape(300, -1).astype(np.float32)
    d = np.abs(imgs[:, None] - imgs[None]).mean(-1)
    assert d[np.triu_indices(300, 1)].min() > 2


def test_subject_key_is_the_identity_and_survives_round_trips():
    s = W.draw_subject(np.random.default_rng(2))
    assert W.Subject.from_params(s.params()).key == s.key
    st = W.draw_style(np.random.default_rng(2))
    assert W.Style.from_params(st.params()).key == st.key
    named = W.SUBJECTS[0]
    assert named.key == W.Subject.from_params({**named.params(), "name": ""}).key  # the name is not the identity
    sc = W.random_scene(np.random.default_rng(3), subjects=[s])
    for R in W.RESOLUTIONS:  # the truth names the subject by its key at every resolution
        assert W.truth(W.render(sc, R))["subjects"] == [s.key]


def test_subjects_are_prominent():
    """A subject's box is a median >= 20 % of the frame (world v2; it was 11 %)."""
    rng = np.random.default_rng(5)
    boxes = []
    for _ in range(100):
        t = W.truth(W.render(W.random_scene(rng, subjects=[W.draw_subject(rng)]), 32))
        b = next(o["box"] for o in t["objects"] if o["subject"])
        boxes.append((b[2] - b[0]) * (b[3] - b[1]))
        assert len(t["objects"]) <= 3  # at most two other objects
    assert np.median(boxes) >= 0.2


def test_procedural_styles_differ_and_bad_inputs_are_named():
    r = W.render(W.random_scene(np.random.default_rng(6)), 32)
    rng = np.random.default_rng(7)
    outs = [W.to_uint8(W.stylize(r.image, W.draw_style(rng))) for _ in range(20)]
    base = W.to_uint8(r.image).astype(int)
    assert all(np.abs(o - base).mean() > 3 for o in outs)
    with pytest.raises(ValueError, match="'train'.*'test'"):
        W.draw_subject(rng, "val")
    with pytest.raises(ValueError, match="'train'.*'test'"):
        W.draw_style(rng, "held_out")
    with pytest.raises(ValueError, match="draw_subject"):
        W.random_scene(rng, subjects=["zib"])


def test_render_window_holds_every_shape_and_part():
    """render.EXTENT bounds each shape and part (in radii): nothing of them lies outside the window it sets."""
    from iimagen.world.render import EXTENT, _part, shape_mask
    from iimagen.world.scene import PARTS, SHAPES

    g = np.linspace(-2, 2, 1601)
    U, V = np.meshgrid(g, g)
    radius = np.maximum(abs(U), abs(V))  # the window is a square
    for name in SHAPES + PARTS:
        mask = shape_mask(name, U, V) if name in SHAPES else _part(name, U, V)
        assert not (mask & (radius > EXTENT[name])).any(), name
