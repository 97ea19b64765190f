"""scripts/ship_runs.py: what a model card says about where and beside what a run trained comes from runs.log;
experiments/two_readers.py: which weights the models it builds take from which model."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _script(name: str, folder: str = "scripts"):
    """FOLDER/NAME.py as a module (scripts/ and experiments/ are not packages)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ship_runs = _script("ship_runs")

LOG = """== 2026-12-02T00:35:40Z pilot: iimagen train --steps 20000 --workdir R/pilot
== 2026-12-02T00:35:41Z single_subject: iimagen train --steps 20000 --workdir R/single_subject
== 2026-12-02T01:26:34Z pilot exit 0: {"workdir": "R/pilot", "steps": 1424}
== 2026-12-02T01:26:38Z single_subject exit 0: {"workdir": "R/single_subject", "steps": 1427}
== 2026-12-02T01:30:00Z later: iimagen train --steps 10 --workdir R/later
== 2026-12-02T01:40:00Z later exit 0: {"workdir": "R/later", "steps": 10}
== 2026-12-02T03:22:00Z single_subject: iimagen train --steps 20000 --workdir R/single_subject
== 2026-12-02T04:48:00Z single_subject exit 0: {"workdir": "R/single_subject", "steps": 5800}
== 2026-12-02T04:50:00Z stage1: iimagen train --steps 5 --workdir R/stage1""".splitlines()


def test_segments_pair_each_start_with_its_exit_and_a_running_one_ends_at_the_log():
    assert ship_runs._segments(LOG, "single_subject") == [("2026-12-02T00:35:41Z", "2026-12-02T01:26:38Z"),
                                                          ("2026-12-02T03:22:00Z", "2026-12-02T04:48:00Z")]
    assert ship_runs._segments(LOG, "stage1") == [("2026-12-02T04:50:00Z", "2026-12-02T04:50:00Z")]
    assert ship_runs._segments(LOG, "absent") == []


def test_side_by_side_names_only_runs_that_overlapped_a_segment():
    assert ship_runs._side_by_side(LOG, "single_subject") == ["pilot"]
    assert ship_runs._side_by_side(LOG, "pilot") == ["single_subject"]
    assert ship_runs._side_by_side(LOG, "later") == []
    assert ship_runs._started(LOG, "single_subject") == ["iimagen train --steps 20000 --workdir R/single_subject"] * 2


def test_summaries_come_from_the_runs_own_exit_lines_whatever_its_workdir():
    assert [s["steps"] for s in ship_runs._summaries(LOG, "single_subject")] == [1427, 5800]
    assert [s["steps"] for s in ship_runs._summaries(LOG, "later")] == [10]
    assert ship_runs._summaries(LOG, "stage1") == []


def test_stage2_card_names_the_model_it_started_from():
    plain = ship_runs.SHIP["stage2"][1]
    assert ship_runs._stage2_what("iimagen train --stage 2 --init R/stage1 --workdir R/stage2", plain) == plain
    what = ship_runs._stage2_what("iimagen train --stage 2 --init data/checkpoints/single-task-subject-tiny "
                                  "--workdir R/stage2", plain)
    assert "from `single-task-subject-tiny` (a curriculum: `subject` alone first" in what, what


def test_two_readers_keeps_the_mixture_model_and_takes_the_specialists_reader():
    import numpy as np

    from iimagen.checkpoint import _flat_params, random_model
    from iimagen.configs import get_config

    tr = _script("two_readers", "experiments")
    cfg = get_config("tiny")
    mix, specialist = random_model(cfg, seed=1), random_model(cfg, seed=2)
    both = tr.two_readers(mix, specialist)
    assert both.cfg.ctx_content_attn and not mix.cfg.ctx_content_attn
    new, old, sp = _flat_params(both), _flat_params(mix), _flat_params(specialist)
    content = [k for k in new if "/ctx_content/" in k]
    assert content and set(new) - set(old) == set(content)
    for k in old:  # every weight of the mixture model, unchanged
        np.testing.assert_array_equal(new[k], old[k])
    for k in content:  # each block's content attention is the specialist's context attention of that block
        np.testing.assert_array_equal(new[k], sp[k.replace("/ctx_content/", "/ctx_attn/")])
    assert not np.array_equal(sp[content[0].replace("/ctx_content/", "/ctx_attn/")],
                              old[content[0].replace("/ctx_content/", "/ctx_attn/")])
    with pytest.raises(ValueError, match="no content attention"):
        tr.two_readers(both, specialist)

    # --new-aligned: the specialist whole, its reader moved to the content slot, a new aligned reader at birth
    new = _flat_params(tr.new_aligned(specialist))
    aligned = [k for k in new if "/ctx_attn/" in k]
    assert set(new) - set(sp) == set(content) and aligned
    codes = {"ctx_row", "ctx_col"}  # the 2-D position code, scaled back to its rms at birth
    for k in codes:
        np.testing.assert_allclose(new[k], sp[k] * tr.POS_RMS / np.sqrt(np.mean(np.square(sp[k]))), rtol=1e-5)
        np.testing.assert_allclose(np.sqrt(np.mean(np.square(new[k]))), tr.POS_RMS, rtol=1e-5)
    for k in set(sp) - set(aligned) - codes:  # the specialist's every other weight, unchanged
        np.testing.assert_array_equal(new[k], sp[k])
    for k in content:
        np.testing.assert_array_equal(new[k], sp[k.replace("/ctx_content/", "/ctx_attn/")])
    for k in aligned:
        if k.endswith("out/kernel"):  # the new reader adds nothing at birth ...
            assert not np.any(new[k])
        if k.endswith("kv/kernel"):  # ... and is aligned: its key projection is its query projection
            q = new[k.replace("kv/kernel", "q/kernel")]
            np.testing.assert_array_equal(new[k][:, :q.shape[1]], q)
            assert not np.array_equal(q, sp[k.replace("kv/kernel", "q/kernel")])

    # --aligned-from: a trained aligned reader (here the mixture model's) with the position code it was trained with
    taken = _flat_params(tr.new_aligned(specialist, aligned_from=mix))
    for k in aligned + sorted(codes):
        np.testing.assert_array_equal(taken[k], old[k])
    for k in set(sp) - set(aligned) - codes:
        np.testing.assert_array_equal(taken[k], new[k])
