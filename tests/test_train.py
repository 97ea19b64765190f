"""Training: the three stages chain, resume after SIGKILL is exact, 8 devices give the losses of one."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from iimagen.train import TrainConfig, TrainError, context_capacity, context_text_len, mixture_weights, parse_overrides, read_metrics, train

# A model small enough that a CPU step takes milliseconds: the loop, not the model, is under test here.
MICRO = "channels=16,channel_mult=1:2,blocks_per_level=1,text_width=32,text_layers=1,head_dim=16,norm_groups=8"
ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kw):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "iimagen.cli", "train", "--no-progress", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_overrides_parse():
    assert parse_overrides("channels=16,channel_mult=1:2,use_context=false,dropout=0.1") == {
        "channels": 16, "channel_mult": (1, 2), "use_context": False, "dropout": 0.1}
    with pytest.raises(TrainError, match="FIELD=VALUE"):
        parse_overrides("channels")


def test_mixture_option_changes_table_1_weights():
    from iimagen.data import Loader
    from iimagen.tasks import STAGE2_MIXTURE, task_id

    assert mixture_weights("") is None
    m = mixture_weights("subject=2.4, edge_to_image=0")  # subject 2.4 of 2.94: the rest keep Table 1's ratios
    assert "edge_to_image" not in m and abs(sum(m.values()) - 1) < 1e-12
    assert abs(m["subject"] - 2.4 / 2.94) < 1e-12 and abs(m["depth_to_image"] / m["mask_to_image"] - 1) < 1e-12
    assert abs(m["text_to_image"] / m["artwork"] - STAGE2_MIXTURE["text_to_image"] / STAGE2_MIXTURE["artwork"]) < 1e-9
    for bad, msg in (("subjekt=1", "source of Table 1"), ("subject", "SOURCE=WEIGHT"), ("subject=lots", "number"),
                     ("subject=-1", ">= 0"), (",".join(f"{k}=0" for k in STAGE2_MIXTURE), "above 0")):
        with pytest.raises(TrainError, match=msg):
            TrainConfig(stage=2, mixture=bad).resolved()
    with pytest.raises(TrainError, match="applies to stage 2"):
        TrainConfig(stage=1, mixture="subject=1").resolved()
    with pytest.raises(TrainError, match="conflict"):
        TrainConfig(stage=2, variant="single_task=subject", mixture="subject=1").resolved()
    # the loader draws from it: only subjects and depth maps here
    L = Loader(2, 32, 32, seed=0, workers=0, mixture=mixture_weights(",".join(
        f"{k}={int(k in ('subject', 'depth_to_image'))}" for k in STAGE2_MIXTURE)))
    ids = set(L.batch(0)["task_id"].tolist())
    assert ids == {task_id("subject"), task_id("depth_to_image")}


def test_ctx_lr_scale_scales_the_content_reader_updates_only():
    from flax import nnx

    from iimagen.configs import get_config
    from iimagen.model import InstructImagen
    from iimagen.train import context_branch_mask, make_optimizer

    one = nnx.split(InstructImagen(get_config("tiny", ctx_content_attn=False, **parse_overrides(MICRO)), nnx.Rngs(0)),
                    nnx.Param)[1]  # a model with the aligned reader alone: the whole context branch
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(one)[0]]
    mask = jax.tree.leaves(context_branch_mask(one))
    assert {n for n, m in zip(names, mask) if m} == {n for n in names if "ctx_" in n} and 0 < sum(mask) < len(mask)
    # both readers: only the position-free one (the aligned reader and the position codes keep the backbone's rate)
    params = nnx.split(InstructImagen(get_config("tiny", **parse_overrides(MICRO)), nnx.Rngs(0)), nnx.Param)[1]
    mask = jax.tree.leaves(context_branch_mask(params))
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert {n for n, m in zip(names, mask) if m} == {n for n in names if "ctx_content" in n} and 0 < sum(mask)
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(x.size), x.shape) * 1e-3, params)

    def second_update(**kw):
        tc = TrainConfig(stage=2, warmup=1, **kw).resolved()
        tx = make_optimizer(tc)
        _, opt_state = tx.update(grads, tx.init(params), params)  # step 0 of the warm-up has LR 0
        return jax.tree.leaves(tx.update(grads, opt_state, params)[0])

    plain, scaled = second_update(), second_update(ctx_lr_scale=10.0)
    for m, a, b in zip(mask, plain, scaled):
        np.testing.assert_allclose(b, a * (10.0 if m else 1.0), rtol=1e-5, atol=1e-12)
    assert any(np.abs(a).max() > 0 for m, a in zip(mask, plain) if m)
    with pytest.raises(TrainError, match="--ctx-lr-scale 0.0"):
        TrainConfig(ctx_lr_scale=0.0).resolved()


def test_stage_errors(tmp_path):
    with pytest.raises(TrainError, match="--init"):
        train(TrainConfig(stage=1, workdir=str(tmp_path / "a"), override=MICRO, steps=1), progress=False)
    with pytest.raises(TrainError, match="not a stage"):
        TrainConfig(stage=3).resolved()
    with pytest.raises(TrainError, match="--names 'nonse'.*nonce"):
        TrainConfig(stage=2, names="nonse").resolved()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Stage 0 -> 1 -> 2 of the micro model, a few steps each, in-process."""
    root = tmp_path_factory.mktemp("chain")
    out = {}
    # Stage 0 without the input skip, as the shipped stage0-tiny: stage 1 then adds it at identity (with the context).
    # Data built in a thread (workers=0): spawning worker processes for a few steps costs more than it saves; the
    # workers themselves are tested in test_data.py.
    out[0] = train(TrainConfig(stage=0, workdir=str(root / "s0"), override=MICRO + ",input_skip=false", steps=6,
                               batch_size=8, log_every=2, ckpt_every=3, workers=0), progress=False)
    out[1] = train(TrainConfig(stage=1, workdir=str(root / "s1"), init=str(root / "s0"), steps=4, batch_size=8,
                               pool_size=64, log_every=2, workers=0), progress=False)
    out[2] = train(TrainConfig(stage=2, workdir=str(root / "s2"), init=str(root / "s1"), steps=4, batch_size=8,
                               log_every=2, workers=0), progress=False)
    return root, out


def test_stages_chain_and_export(chain):
    from flax import nnx

    from iimagen.checkpoint import load_model

    root, out = chain
    for stage in (0, 1, 2):
        assert out[stage]["steps"] == (6 if stage == 0 else 4)
        recs = read_metrics(root / f"s{stage}")
        assert recs and all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in recs)
        model, tok, meta = load_model(root / f"s{stage}" / "export")
        assert model.cfg.use_context == (stage > 0) and model.cfg.input_skip == (stage > 0)
        assert meta["stage"] == stage and meta["steps"] == out[stage]["steps"]
    # stage 2 logs a loss per task of the mixture
    assert len(read_metrics(root / "s2")[-1]["task_loss"]) >= 2
    # a finished run's workdir stands for its export wherever a checkpoint is asked for (iimagen sample / eval)
    a, b = load_model(root / "s2")[0], load_model(root / "s2" / "export")[0]
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))))


def test_latest_checkpoint_ema_equals_the_export(chain, tmp_path):
    """load_any on a workdir still training (no export yet) reads the EMA of its latest checkpoint."""
    from flax import nnx

    from iimagen.checkpoint import load_model
    from iimagen.train import load_any, load_latest_ema

    root, out = chain
    model, _, meta = load_latest_ema(root / "s2")
    exported, _, _ = load_model(root / "s2" / "export")
    assert meta["steps"] == out[2]["steps"] and meta["stage"] == 2
    a, b = nnx.state(model, nnx.Param), nnx.state(exported, nnx.Param)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(TrainError, match="no checkpoint yet"):
        (tmp_path / "w" / "checkpoints").mkdir(parents=True)
        load_any(tmp_path / "w")


def test_a_kept_checkpoint_loads_by_step_and_a_missing_one_is_a_clear_error(chain):
    from flax import nnx

    from iimagen.train import load_latest_ema

    root, _ = chain
    early, _, meta = load_latest_ema(root / "s0", step=3)
    late = load_latest_ema(root / "s0")[0]
    assert meta["steps"] == 3
    a, b = jax.tree.leaves(nnx.state(early, nnx.Param)), jax.tree.leaves(nnx.state(late, nnx.Param))
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    with pytest.raises(TrainError, match=r"no checkpoint 5 .*kept: \[3, 6\]"):
        load_latest_ema(root / "s0", step=5)


def test_learning_curves_score_a_run_at_its_checkpoints_and_resume(chain, tmp_path):
    """scripts/learning_curves.py: one line per checkpoint with O in-domain, the examples of the run and of its
    stage-1 init; the same command again adds nothing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("learning_curves", ROOT / "scripts" / "learning_curves.py")
    lc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lc)
    assert lc.log_spaced([100, 200, 400, 800, 1600, 3200], 3) == [100, 800, 3200]
    assert lc.log_spaced([3, 6], 5) == [3, 6]
    root, _ = chain
    out = tmp_path / "curves.jsonl"
    args = [str(root / "s2"), "--out", str(out), "--n", "1", "--tasks", "edge_to_image"]
    assert lc.main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["step"], r["examples"], r["examples_before"]) for r in rows] == [(4, 32, 32)]  # stage 1: 4 x 8
    assert 0 <= rows[0]["in_domain"]["o"] <= 1 and rows[0]["zero_shot"] is None
    assert lc.main(args) == 0 and len(out.read_text().splitlines()) == 1


def test_later_stages_only_add_parts_at_identity(chain, tmp_path):
    from iimagen.train import build_model, load_any

    root, _ = chain
    # Stage 1 of a named config reads by place and by content from birth; stage 2 keeps both readers.
    assert load_any(str(root / "s1"))[0].cfg.ctx_content_attn
    kept = build_model(TrainConfig(stage=2, init=str(root / "s1"), override="ctx_content_attn=true"))
    assert kept.cfg.ctx_content_attn and kept.middle.ctx_content is not None
    with pytest.raises(TrainError, match="keeps the --init model's layout"):
        train(TrainConfig(stage=2, workdir=str(tmp_path / "x"), init=str(root / "s1"), override="channels=8",
                          steps=1, batch_size=8), progress=False)


def test_wrong_config_checkpoint_is_a_clear_error(chain):
    root, _ = chain
    with pytest.raises(TrainError, match="another config"):
        train(TrainConfig(stage=0, workdir=str(root / "s0"), override=MICRO + ",channels=8", steps=8,
                          batch_size=8), progress=False)


def test_a_run_begun_before_a_switch_retired_still_resumes():
    """A checkpoint's stored model config matches the run's even when it stored a retired switch off (runs begun
    before the retirement resume); stored on, or with any other field changed, it is another config."""
    import dataclasses

    from iimagen.configs import RETIRED, get_config
    from iimagen.train import same_config

    cfg = get_config("tiny")
    stored = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert same_config(stored, cfg)
    for k, off in RETIRED.items():
        assert same_config({**stored, k: off}, cfg)
        assert not same_config({**stored, k: not off}, cfg)
    assert not same_config({**stored, "channels": cfg.channels * 2}, cfg)
    assert not same_config({**stored, "no_such_field": 1}, cfg)
    assert not same_config(None, cfg)


def test_a_workdir_resumed_past_its_export_loads_its_latest_checkpoint(chain, tmp_path):
    """A finished run resumed with a larger --steps still holds its old export until it ends (or if it is killed):
    load_any gives the newer checkpoint's EMA, not the stale export."""
    import shutil

    from iimagen.train import load_any

    root, out = chain
    work = tmp_path / "s0"
    shutil.copytree(root / "s0", work)
    train(TrainConfig(stage=0, workdir=str(work), override=MICRO + ",input_skip=false", batch_size=8, workers=0,
                      steps=out[0]["steps"] + 1, ckpt_every=1), progress=False)
    meta = load_any(work)[2]
    assert meta["steps"] == out[0]["steps"] + 1 and "from_checkpoint" not in meta
    shutil.rmtree(work / "export")
    shutil.copytree(root / "s0" / "export", work / "export")        # as if killed after its last checkpoint
    meta = load_any(work)[2]
    assert meta["steps"] == out[0]["steps"] + 1 and meta["from_checkpoint"]


def test_a_checkpoint_of_nnx_variables_still_resumes(chain, tmp_path):
    """Train states were nnx Variables until 2026-12-08 and stored their leaf names with a `.value` suffix; the state
    is now plain arrays (cheaper to pass to the step), and such a checkpoint still resumes."""
    import shutil

    root, out = chain
    work = tmp_path / "s0"
    shutil.copytree(root / "s0", work)
    metas = sorted((work / "checkpoints").glob("*/meta/metadata"), key=lambda p: int(p.parts[-3]))
    meta = json.loads(metas[-1].read_text())
    assert not any(n.endswith(".value") for n in meta["leaf_names"])
    meta["leaf_names"] = [n if n == "['step']" else n + ".value" for n in meta["leaf_names"]]
    metas[-1].write_text(json.dumps(meta))
    res = train(TrainConfig(stage=0, workdir=str(work), override=MICRO + ",input_skip=false", batch_size=8,
                            workers=0, steps=out[0]["steps"] + 1, ckpt_every=1), progress=False)
    assert res["steps"] == out[0]["steps"] + 1


def test_resume_on_other_data_warns_and_goes_on(chain, tmp_path, monkeypatch):
    """A resumed run whose data differ from its checkpoint's (here: a kit whose examples changed since the run began;
    test_data.py shows the fingerprint telling real data apart) says so and trains on; resuming again on the same
    data is silent."""
    import shutil
    import warnings

    from iimagen.data import Loader
    from iimagen.train import DataChangedWarning

    root, _ = chain
    work = tmp_path / "s0"
    shutil.copytree(root / "s0", work)
    kit = Loader.fingerprint
    monkeypatch.setattr(Loader, "fingerprint", lambda self, n=4: "new" + kit(self, n)[3:])
    args = dict(stage=0, workdir=str(work), override=MICRO + ",input_skip=false", batch_size=8, workers=0)
    with pytest.warns(DataChangedWarning, match="resuming at step 6: data fingerprint new.* differs"):
        assert train(TrainConfig(**args, steps=7), progress=False)["steps"] == 7
    # the checkpoint it wrote carries the new fingerprint: the next resume is silent
    import orbax.checkpoint as ocp

    from iimagen.train import check_data, read_meta

    meta = read_meta(ocp.CheckpointManager(work / "checkpoints"), 7)
    assert meta["data_fingerprint"].startswith("new")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataChangedWarning)
        check_data(meta["data_fingerprint"], meta, 7)
    with pytest.warns(DataChangedWarning, match="predates data fingerprints"):
        check_data(meta["data_fingerprint"], {"wall_s": 1.0}, 7)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    args = ["--stage", "0", "--override", MICRO, "--steps", "10", "--batch-size", "8", "--log-every", "1",
            "--ckpt-every", "4"]
    full = _run([*args, "--workdir", str(tmp_path / "full")])
    killed = _run([*args, "--workdir", str(tmp_path / "killed")])
    # kill -9 as soon as the step-8 checkpoint is on disk (orbax writes it atomically: a finalised folder)
    ckdir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckdir / "8").is_dir():
        if killed.poll() is not None:
            break
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed: " + killed.stdout.read()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert full.wait(timeout=300) == 0, full.stdout.read()
    resumed = _run([*args, "--workdir", str(tmp_path / "killed")])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "full")}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "killed")}
    assert sorted(a) == sorted(b) == list(range(1, 11))
    raw = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert raw == list(range(1, 11))  # what the killed run logged past its checkpoint was dropped on resume
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)
    # the export's training time counts the killed run's time up to its checkpoint, not only the resumed run's
    from iimagen.checkpoint import load_model

    summary = json.loads(resumed.stdout.read().strip().splitlines()[-1])
    assert summary["total_wall_s"] > summary["wall_s"] > 0
    assert load_model(tmp_path / "killed" / "export")[2]["wall_s"] == pytest.approx(summary["total_wall_s"])


def test_resume_drops_records_logged_after_the_checkpoint(tmp_path):
    """A run killed after its step-8 checkpoint may have logged steps 9-10; resuming from 8 drops them, so a resumed
    run with a smaller --steps does not keep a loss the exported model never had."""
    from iimagen.train import drop_lost_records

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n"
                                                    for s in range(1, 11)))
    assert drop_lost_records(tmp_path, 8) == 2
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 9))
    assert drop_lost_records(tmp_path, 8) == 0 and drop_lost_records(tmp_path / "none", 3) == 0


def test_eight_devices_give_the_losses_of_one(tmp_path):
    """Same global batch, same losses: on 8 simulated CPU devices (data-parallel and fsdp) and on one, each step
    compiled once; and `train()` itself with --fsdp on 8 devices."""
    code = textwrap.dedent(f"""
        import json, jax, numpy as np
        from jax.sharding import Mesh
        from iimagen import train as T
        from iimagen.data import Loader
        from iimagen.tasks import TASK_NAMES
        from flax import nnx
        assert jax.device_count() == 8
        tc = T.TrainConfig(stage=0, override="{MICRO}", steps=3, batch_size=8).resolved()
        batches = [b for _, b in zip(range(3), Loader(stage=0, batch_size=8, resolution=32, seed=0, K=3, workers=0))]
        out = {{}}
        for name, devs, fsdp in (("one", jax.devices()[:1], False), ("dp8", jax.devices(), False),
                                 ("fsdp8", jax.devices(), True)):
            mesh = Mesh(np.array(devs), ("data",))
            model = T.build_model(tc)
            graphdef, params = nnx.split(model, nnx.Param)
            tx = T.make_optimizer(tc)
            state = T.init_state(params, tx, mesh, fsdp)
            step = T.jit_train_step(T.make_train_step(graphdef, tx, tc, len(TASK_NAMES)), state, mesh)
            losses = []
            for (s, b) in batches:
                state, m = step(state, T.shard_batch(mesh, b))
                losses.append(float(m["loss"]))
            out[name] = losses
            out[name + "_compiles"] = step._cache_size()
        # the CLI's loop itself (compiled ahead, donated state) with fsdp on all 8 devices
        T.train(T.TrainConfig(stage=0, override="{MICRO}", steps=3, batch_size=8, workers=0, fsdp=True, log_every=1,
                              workdir="{tmp_path / 'fsdp'}"), progress=False)
        out["train_fsdp8"] = [r["loss"] for r in T.read_metrics("{tmp_path / 'fsdp'}")]
        print(json.dumps(out))
    """)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [out[k + "_compiles"] for k in ("one", "dp8", "fsdp8")] == [1, 1, 1]
    np.testing.assert_allclose(out["dp8"], out["one"], rtol=2e-5)
    np.testing.assert_allclose(out["fsdp8"], out["one"], rtol=2e-5)
    np.testing.assert_allclose(out["train_fsdp8"], out["one"], rtol=2e-5)  # every step ran, on the same batches
    assert out["one"][0] != out["one"][-1]  # the model trained: losses moved


def test_ctrl_c_stops_in_one_line_with_every_checkpoint_whole_and_resumes(tmp_path):
    """SIGINT mid-run: exit 130, one line naming the step and the checkpoint to resume from, no traceback (orbax's
    included); every checkpoint folder on disk is complete, and the same command resumes from the latest."""
    args = ["--stage", "0", "--override", MICRO, "--batch-size", "4", "--ckpt-every", "3", "--workers", "0",
            "--workdir", str(tmp_path / "w")]
    run = _run([*args, "--steps", "100000"])
    ckdir = tmp_path / "w" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckdir / "6").is_dir() and run.poll() is None:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be interrupted: " + run.stdout.read()
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130
    out = run.stdout.read()
    assert "Traceback" not in out and "interrupted" in out and "run the same command to resume" in out, out
    steps = sorted(int(d.name) for d in ckdir.iterdir() if d.name.isdigit())
    assert steps and all(d.name.isdigit() for d in ckdir.iterdir()), list(ckdir.iterdir())  # no half-written folder
    resumed = _run([*args, "--steps", str(steps[-1] + 1)])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert [r["step"] for r in read_metrics(tmp_path / "w")][-1] == steps[-1] + 1


def test_context_capacity_rounds_the_used_slots_up_to_half_batches():
    """The train step encodes the used context slots rounded up to a multiple of B/2, never fewer than are used, and
    all B*K (None) when rounding reaches them."""
    def mask(used, B=32, K=3):
        m = np.zeros(B * K, bool)
        m[np.random.default_rng(used).permutation(B * K)[:used]] = True
        return m.reshape(B, K)

    assert context_capacity(mask(40), 32, 3) == 48
    assert context_capacity(mask(32), 32, 3) == 32
    assert context_capacity(mask(0), 32, 3) == 16
    assert context_capacity(mask(81), 32, 3) is None      # 96 = all slots
    assert context_capacity(mask(1, B=1), 1, 3) == 1
    assert context_capacity(mask(3, B=1), 1, 3) is None
    for used in range(97):
        c = context_capacity(mask(used), 32, 3)
        assert c is None or used <= c < 96


def test_context_text_len_keeps_every_token():
    """The context texts are cut after the longest one's last token, rounded up to 8, never past the limit."""
    ids = np.zeros((4, 3, 32), np.int32)
    assert context_text_len(ids, 32) == 8                 # no text at all
    ids[1, 2, :5] = 7
    assert context_text_len(ids, 32) == 8
    ids[3, 0, 8] = 9                                      # a token at index 8 (the ninth)
    assert context_text_len(ids, 32) == 16
    ids[0, 1, 31] = 1
    assert context_text_len(ids, 32) == 32 and context_text_len(ids[..., :12], 12) == 12
