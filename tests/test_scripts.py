"""scripts/ship_runs.py: what a model card says about where and beside what a run trained comes from runs.log."""
from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("ship_runs", Path(__file__).parents[1] / "scripts" / "ship_runs.py")
ship_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ship_runs)

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
