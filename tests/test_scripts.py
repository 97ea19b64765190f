"""scripts/ship_runs.py: what a model card says about where and beside what a run trained comes from runs.log;
scripts/train_chain.py: which run starts from which, and how the same command resumes."""
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


train_chain = _script("train_chain")


def test_train_chain_plans_each_run_from_the_one_it_needs(tmp_path, capsys):
    """--dry-run prints the runs in order, each starting from its parent (stage 1 from --stage0, the stage-2 runs
    from stage 1's export, no_stage1 from stage 0), with its kind's budget and the arguments after -- (not for stage
    0); a bad run name or budget is a clear error."""
    out = tmp_path / "chain"
    assert train_chain.main([str(out), "--single", "subject", "--budget", "stage1=30,stage2=40", "--scale", "0.5",
                             "--dry-run", "--", "--lr", "1e-4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [ln.split("--workdir ")[1].split()[0].rsplit("/", 1)[1] for ln in lines]
    assert names == ["stage0", "stage1", "stage2", "multitask", "no_stage1", "single_subject"]
    cmd = dict(zip(names, lines))
    assert f"--init {out}/stage0/export" in cmd["stage1"] and f"--init {out}/stage1/export" in cmd["single_subject"]
    assert f"--init {out}/stage0/export" in cmd["no_stage1"] and "--variant no_instruction" in cmd["multitask"]
    assert "--time-budget 75" in cmd["stage0"] and "--time-budget 15" in cmd["stage1"]
    assert "--time-budget 20" in cmd["stage2"] and "--lr 1e-4" in cmd["stage2"] and "--lr" not in cmd["stage0"]
    assert not out.exists()  # a dry run writes nothing
    train_chain.main([str(out), "--stage0", "S0", "--runs", "stage0,stage1", "--dry-run"])
    assert [ln.split("--workdir ")[1].split()[0] for ln in capsys.readouterr().out.strip().splitlines()] == \
        [f"{out}/stage1"]
    for bad in (["--runs", "stage3"], ["--budget", "stage9=1"], ["--budget", "stage1=soon"]):
        with pytest.raises(SystemExit):
            train_chain.main([str(out), "--dry-run", *bad])


def test_train_chain_resumes_with_what_is_left_and_skips_a_finished_run(tmp_path):
    """spent(): the training seconds a run's metrics.jsonl records (the mean step time times the steps since the last
    line), so the same command resumes a run with the rest of its budget and skips one whose budget is spent."""
    run = tmp_path / "stage1"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 10, "step_time_s": 2.0}\n{"step": 30, "step_time_s": 1.5}\n'
                                       'not json\n{"step": 20, "step_time_s": 9.0}\n')
    assert train_chain.spent(run) == 10 * 2.0 + 20 * 1.5
    assert train_chain.spent(tmp_path / "absent") == 0.0
    a = train_chain.argparse.Namespace(out=str(tmp_path), budgets={"stage1": 50.0}, scale=1.0)
    (run / "export").mkdir()
    assert train_chain.start(a, "stage1", [], "stage1", {}) is None  # 50 s spent of 50: done
