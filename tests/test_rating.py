"""The rating widget driven headless: set values, press the buttons, check the JSONL file, the table and agreement."""
from pathlib import Path

import numpy as np
import pytest

from iimagen import rating as Rt
from iimagen import tasks as T


@pytest.fixture(scope="module")
def examples():
    return T.sample("edge_to_image", 2, 0, 32, split="test") + T.sample("style_subject", 1, 0, 32, split="test")


def _rate(study, sc_of, pq=1.0):
    while study.i < len(study.examples):
        for k, m in enumerate(study.order(study.i)):
            study.sc[k].value = sc_of[m]
            study.pq[k].value = pq
        assert study.on_save(study.save)


def test_widget_headless_blinded_saved_table(tmp_path, examples):
    outs = {"good": [e.target for e in examples], "bad": [np.zeros_like(e.target) for e in examples]}
    path = tmp_path / "r.jsonl"
    s = Rt.RatingStudy(examples, outs, rater="ann", path=path)
    assert s.on_save() is False and "first" in s.status.value  # nothing rated yet: nothing saved
    assert not path.exists()
    orders = {tuple(s.order(i)) for i in range(20)}
    assert len(orders) == 2  # the order is shuffled per example (blinded)
    _rate(s, {"good": 1.0, "bad": 0.0})
    assert s.save.disabled and "Done" in s.header.value
    rows = Rt.load_ratings(path)
    assert len(rows) == 6 and {r["rater"] for r in rows} == {"ann"}
    tab = Rt.ratings_table(rows)
    assert tab["good"]["edge_to_image"]["o"] == 1.0 and tab["bad"]["edge_to_image"]["o"] == 0.0
    assert tab["good"]["zero_shot"]["sc"] == 1.0
    Rt.RatingStudy(examples, outs, rater="bob", path=path)  # a second rater who half-agrees on "bad"
    s2 = Rt.RatingStudy(examples, outs, rater="bob", path=path)
    _rate(s2, {"good": 1.0, "bad": 0.5})
    ag = Rt.agreement(Rt.load_ratings(path))
    assert ag["raters"] == ["ann", "bob"] and ag["sc"]["pairwise"] == pytest.approx(0.5)
    assert ag["pq"]["pairwise"] == 1.0 and 0 < ag["sc"]["alpha"] < 1


def test_alpha_and_bad_input(tmp_path, examples):
    assert Rt.krippendorff_alpha([[1, 1], [0, 0], [0.5, 0.5]]) == 1.0
    assert Rt.krippendorff_alpha([[1, 0], [0, 1]]) < 0
    with pytest.raises(ValueError, match="rater"):
        Rt.RatingStudy(examples, {"a": [e.target for e in examples]}, rater="", path=tmp_path / "x")
    with pytest.raises(ValueError, match="one image per example"):
        Rt.RatingStudy(examples, {"a": []}, rater="ann", path=tmp_path / "x")
    (tmp_path / "bad.jsonl").write_text('{"rater": "a", "item": 0, "task": "t", "model": "m", "sc": 0.7, "pq": 1}\n')
    with pytest.raises(ValueError, match="sc and pq"):
        Rt.load_ratings(tmp_path / "bad.jsonl")


def test_default_path_is_under_the_current_folder(tmp_path, examples, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in Jupyter: the notebook's folder
    s = Rt.RatingStudy(examples[:1], {"a": [examples[0].target]}, rater="ann")
    assert s.path == Path(Rt.DEFAULT_PATH) and not s.path.is_absolute()
    s.sc[0].value, s.pq[0].value = 1.0, 0.5
    assert s.on_save()
    assert len(Rt.load_ratings(tmp_path / Rt.DEFAULT_PATH)) == 1 and str(tmp_path) in s.status.value
