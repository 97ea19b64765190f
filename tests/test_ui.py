"""iimagen.ui.Composer, driven headless: set widget values, press buttons, check state (ipywidgets 7.7.1 and 8.x)."""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import ipywidgets
import numpy as np
import pytest
from PIL import Image

from iimagen import checkpoint as C
from iimagen.configs import get_config
from iimagen.instruction import Instruction
from iimagen.pipeline import Generator
from iimagen.tokenizer import load_tokenizer
from iimagen import ui
from iimagen.ui import (DEFAULT_SETTINGS, HISTORY_SHOWN, PAPER_SETTINGS, Composer, image_from_bytes, live_widgets,
                        renumber_after_removal, uploaded_files)

CFG = dict(channels=16, text_width=32, text_layers=1, text_len=24, ctx_text_len=8, K=2, norm_groups=8, head_dim=16,
           resolution=16)
V7 = ipywidgets.__version__.startswith("7.")


@pytest.fixture(scope="module")
def gen():
    return Generator(C.random_model(get_config("tiny", **CFG), 0, scale=0.2), load_tokenizer(), {})


@pytest.fixture
def comp(gen, tmp_path):
    c = Composer(gen, out_dir=tmp_path / "ui", background=False, preview=False)
    c.sampler.value, c.steps.value, c.num_images.value, c.scale.value = "ddim", 2, 2, 3.0
    return c


def rgb(seed=0, side=20):
    return np.random.default_rng(seed).integers(0, 255, (side, side, 3), np.uint8)


def png(img) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def fake_upload(widget, name, data):
    """What the browser sends, in the shape of this ipywidgets version."""
    if V7:  # the 7.x frontend syncs metadata and data, then bumps _counter, which builds .value
        widget.metadata, widget.data = [{"name": name, "type": "image/png", "size": len(data)}], [data]
        widget._counter += 1
        return
    else:
        value = ({"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
                  "last_modified": datetime.now(timezone.utc)},)
    widget.set_trait("value", value)


def is_error(c):
    return "#b00020" in c.message.value


# -- helpers ---------------------------------------------------------------------------------------------------------
def test_uploaded_files_reads_both_ipywidgets_formats():
    v7 = {"a.png": {"metadata": {"name": "a.png"}, "content": b"xy"}}
    v8 = ({"name": "a.png", "type": "image/png", "size": 2, "content": memoryview(b"xy")},)
    assert uploaded_files(v7) == uploaded_files(v8) == [("a.png", b"xy")]
    assert uploaded_files(()) == uploaded_files({}) == []
    img = rgb(1)
    assert np.array_equal(image_from_bytes(png(img)), img)
    with pytest.raises(ValueError, match="not an image"):
        image_from_bytes(b"hello, not a png", "notes.txt")


def test_renumber_after_removal():
    assert renumber_after_removal("[ref#1] in the style of [ref#2] and [ref#3]", 2) == \
        "[ref#1] in the style of [ref#?] and [ref#2]"


# -- composing -------------------------------------------------------------------------------------------------------
def test_add_remove_contexts_and_markers(comp):
    assert comp.add_context(rgb(1), "a dog", "subject") and comp.add_context(rgb(2), "[ref#2] style image", "style")
    assert [c["text"] for c in comp.contexts] == ["a dog", "style image"]  # markers are the composer's job
    assert not comp.add_context(rgb(3), "one too many") and "K=2" in comp.message.value and len(comp.contexts) == 2
    comp.text.value = "Generate [ref#1] in the style of [ref#2]"
    ins = comp.instruction()
    assert [c.text for c in ins.contexts] == ["[ref#1] a dog", "[ref#2] style image"] and not is_error(comp)
    comp.context_box.children[0].children[-1].click()  # remove context 1
    assert comp.text.value == "Generate [ref#?] in the style of [ref#1]" and is_error(comp)
    assert "malformed reference marker" in comp.message.value and comp.contexts[0]["text"] == "style image"
    comp.context_box.children[0].children[2].value = "depth"  # change the kind in the row
    assert comp.contexts[0]["kind"] == "depth"


def test_invalid_instruction_shows_error_and_does_not_generate(comp):
    comp.text.value = "Render [ref#2] as a painting"  # no contexts yet
    assert is_error(comp) and "[ref#2]" in comp.message.value and "only 0 contexts" in comp.message.value
    comp.generate_button.click()
    assert comp.results == [] and comp.history == [] and comp.text.value == "Render [ref#2] as a painting"
    with pytest.raises(ValueError, match="no run yet"):
        comp.figure()
    comp.text.value = "   "  # an empty text is a hint (grey) until Generate is pressed, then an error naming the field
    assert not is_error(comp) and "Write the instruction text" in comp.message.value
    comp.generate_button.click()
    assert is_error(comp) and comp.message.value.split(">")[1].startswith("text: the instruction text is empty")
    assert comp.history == []


def test_template_fills_text_with_context_markers(comp):
    comp.add_context(rgb(1), "a dog", "subject")
    comp.add_context(rgb(2), "watercolour", "style")
    comp.task.value = "style_subject"
    comp.template_button.click()
    assert "[ref#1] a dog" in comp.text.value and "[ref#2] watercolour" in comp.text.value
    assert comp.instruction().markers == [1, 2] and not is_error(comp)
    comp.task.value = "edge_to_image"  # one ref, with a caption
    comp.caption.value = "a blue square"
    comp.template_button.click()
    assert "a blue square" in comp.text.value and "[ref#1]" in comp.text.value


def test_bad_upload_shows_error_and_keeps_state(comp):
    comp.add_context(rgb(1), "a dog", "subject")
    comp.text.value = "Draw [ref#1] on a beach"
    fake_upload(comp.upload, "notes.txt", b"this is not an image")
    assert is_error(comp) and "notes.txt" in comp.message.value and "not an image" in comp.message.value
    assert len(comp.contexts) == 1 and comp.text.value == "Draw [ref#1] on a beach"
    comp.upload_kind.value, comp.upload_text.value = "style", "my style"
    fake_upload(comp.upload, "good.png", png(rgb(5)))  # a real image is added as a context
    assert len(comp.contexts) == 2 and comp.contexts[1]["kind"] == "style" and comp.contexts[1]["text"] == "my style"
    assert np.array_equal(comp.contexts[1]["image"], rgb(5)) and comp.text.value == "Draw [ref#1] on a beach"


def test_gallery_and_examples_sources(comp):
    from iimagen import tasks

    comp.gallery_task.value = "style_transfer"
    want = tasks.sample("style_transfer", 4, 0, 64)[0].instruction.contexts[1]  # world renders: 32/64/128 px
    comp.gallery_item.index = 1  # example 1, context 2
    comp.gallery_add.click()
    assert len(comp.contexts) == 1 and np.array_equal(comp.contexts[0]["image"], want.image)
    assert comp.contexts[0]["kind"] == want.kind and "[ref#" not in comp.contexts[0]["text"]
    labels = [o[0] for o in comp.example_item.options]
    comp.example_item.index = labels.index(next(lab for lab in labels if lab.startswith("style_subject")))
    comp.example_load.click()
    want = Instruction.load(comp.examples_dir / "style_subject")
    assert comp.instruction() == want and not is_error(comp)


# -- generating ------------------------------------------------------------------------------------------------------
def test_generate_shows_results_save_and_history_restore(comp, tmp_path):
    comp.add_context(rgb(1), "a dog", "subject")
    comp.text.value = "Generate [ref#1] on a beach"
    comp.seed.value = 7
    comp.generate_button.click()
    assert len(comp.results) == 2 and all(r.shape == (16, 16, 3) and r.dtype == np.uint8 for r in comp.results)
    assert len(comp.results_box.children) == 2 and comp.progress.value == 2 and "done: 2/2" in comp.status.value
    assert not np.array_equal(comp.results[0], comp.results[1])  # seeds 7 and 8
    assert comp.generate_button.disabled is False and comp.stop_button.disabled is True
    # the same instruction through the Generator directly gives the same image: nothing is hard-coded in the UI
    direct = comp.generator.generate(comp.instruction(), sampler="ddim", steps=2, guidance=comp.guidance(
        comp.settings()), seed=8, progress=False)[0]
    assert np.array_equal(direct, comp.results[1])

    comp.save_dir.value = str(tmp_path / "saved")
    comp.save_button.click()
    saved = tmp_path / "saved"
    assert Instruction.load(saved) == comp.history[0].instruction
    assert sorted(p.name for p in saved.glob("output_*.png")) == ["output_0.png", "output_1.png"]
    assert np.array_equal(np.asarray(Image.open(saved / "output_1.png")), comp.results[1])
    assert json.loads((saved / "settings.json").read_text())["seed"] == 7 and "saved to" in comp.message.value

    first = list(comp.results)
    assert [o[0] for o in comp.use_item.options] == ["image 1 (seed 7)", "image 2 (seed 8)"]
    comp.use_item.value = 0
    comp.use_button.click()  # an output becomes context 2
    assert len(comp.contexts) == 2 and np.array_equal(comp.contexts[1]["image"], first[0])
    comp.text.value, comp.seed.value, comp.num_images.value = "Something else with [ref#2]", 3, 1
    comp.generate()
    assert len(comp.history) == 2 and len(comp.history_box.children) == 2
    comp.history_box.children[-1].children[1].children[0].click()  # restore run 1 (listed last)
    assert comp.text.value == "Generate [ref#1] on a beach" and len(comp.contexts) == 1
    assert comp.seed.value == 7 and comp.num_images.value == 2
    assert all(np.array_equal(a, b) for a, b in zip(comp.results, first)) and len(comp.results) == 2
    assert comp.save(tmp_path / "default_run", run=2).joinpath("output_0.png").exists()
    assert len(comp.figure(1).axes) == 1 + 2  # run 1: one context, two outputs
    comp.clear()
    assert comp.contexts == [] and comp.text.value == "" and comp.context_box.children == ()

    # the x0-clip setting reaches the sampler (no clipping gives another image than dynamic thresholding here)
    comp.add_context(rgb(1), "a dog", "subject")
    comp.text.value = "Generate [ref#1] on a beach"
    comp.clip.value, comp.num_images.value, comp.seed.value = "none", 1, 8
    run = comp.generate()
    direct_none = comp.generator.generate(comp.instruction(), sampler="ddim", steps=2, guidance=comp.guidance(
        comp.settings()), seed=8, clip="none", progress=False)[0]
    assert np.array_equal(run.images[0], direct_none) and not np.array_equal(run.images[0], direct)
    # per-reference guidance: [ref#1] at 4 reaches the sampler (one more branch), is kept with the run, and a
    # malformed field is refused with the fix named and nothing generated
    comp.references.value = "1=4"
    g = comp.guidance(comp.settings())
    assert g.references == ((1, 4.0),) and g.n_branches == g.n_base + 1
    run = comp.generate()
    direct_ref = comp.generator.generate(comp.instruction(), sampler="ddim", steps=2, guidance=g, seed=8,
                                         clip="none", progress=False)[0]
    assert np.array_equal(run.images[0], direct_ref) and not np.array_equal(run.images[0], direct_none)
    assert run.settings["references"] == "1=4" and "per-ref 1=4" in comp.history_box.children[0].children[0].value
    comp.references.value = "ref#1"
    n_runs = len(comp.history)
    assert comp.generate() is None and "I=W pairs" in comp.message.value and len(comp.history) == n_runs
    comp.references.value = ""
    comp.clear()
    comp.clip.value = "dynamic"


def test_stop_keeps_completed_images(comp):
    comp.text.value = "a red circle on a beach"
    comp.num_images.value = 4
    comp.progress_callbacks.append(lambda done, total: comp.stop_button.click() if done == 1 else None)
    run = comp.generate()
    assert run.stopped and len(run.images) == 1 and len(comp.results) == 1 and comp.progress.value == 1
    assert "stopped: 1/4" in comp.status.value and comp.history[-1] is run
    assert comp.generate_button.disabled is False  # ready for the next run
    comp.progress_callbacks.clear()
    comp.num_images.value = 1
    assert not comp.generate().stopped  # the stop flag does not leak into the next run


def test_background_thread_run_and_failure_message(gen, tmp_path):
    c = Composer(gen, out_dir=tmp_path, background=True, preview=True)
    c.sampler.value, c.steps.value, c.num_images.value = "ddim", 2, 2
    c.text.value = "a green square"
    c.generate_button.click()
    c.wait()
    assert len(c.results) == 2 and len(c.history) == 1 and "done" in c.status.value
    assert c.preview.value.startswith("<img src=\"data:image/png;base64,")  # the preview (Fig. 2 style)
    c.generator = type("Broken", (), {"generate": lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")),
                                      "cfg": gen.cfg})()
    c.generate(wait=True)
    assert "generation failed" in c.message.value and "boom" in c.message.value and len(c.history) == 1


# -- faults found in a real browser (issue 34; tests/test_browser.py drives the same in JupyterLab) --------------------
def test_fresh_composer_defaults_labels_and_paper_recipe(gen, tmp_path):
    c = Composer(gen, out_dir=tmp_path, background=False, preview=False)
    assert not is_error(c) and "Write the instruction text" in c.message.value  # no red message before any input
    s = c.settings()
    assert {k: s[k] for k in DEFAULT_SETTINGS} == DEFAULT_SETTINGS  # the default lives in one constant
    c.paper_button.click()  # the paper's recipe: one click
    assert {k: c.settings()[k] for k in PAPER_SETTINGS} == PAPER_SETTINGS
    c.default_button.click()
    assert {k: c.settings()[k] for k in DEFAULT_SETTINGS} == DEFAULT_SETTINGS
    labels = [o[0] for o in c.gallery_item.options]  # subject examples hold several views of one subject
    assert len(labels) == len(set(labels)) and any("[ref#2]" in lab for lab in labels)
    # per-reference guidance: the message names the app's field, not the command-line flag
    c.text.value = "a red circle on a beach"
    c.references.value = "ref#1"
    assert c.generate() is None and is_error(c) and "per-ref w" in c.message.value
    assert "--reference-guidance" not in c.message.value
    c.references.value = "1=3"  # a reference the instruction does not have
    assert c.generate() is None and "names [ref#1], but the instruction has 0" in c.message.value and c.history == []


def test_compile_message_and_indeterminate_bar_only_on_first_use(comp):
    comp.text.value = "a red circle on a beach"
    comp.sampler.value, comp.steps.value, comp.num_images.value = "dpm", 3, 2  # settings no other test compiles
    status, busy = [], []
    comp.status.observe(lambda ch: status.append(ch["new"]), "value")
    comp.busy.observe(lambda ch: busy.append(ch["new"]), "value")
    comp.generate()
    assert sum("compiling" in v for v in status) == 1 and "compiling" in status[0]  # image 1 only
    assert "<progress" in busy[0] and "value=" not in busy[0] and busy[-1] == ""  # indeterminate, then gone
    assert comp.progress.layout.display is None  # the 0..N bar is back
    status.clear(), busy.clear()
    comp.generate()  # same settings: nothing compiles, nothing says so
    assert status and not any("compiling" in v for v in status) and not any(busy)
    assert status[-1].startswith("done: 2/2")


def test_stop_pressed_as_the_run_ends_does_not_hang_the_status(comp):
    comp.text.value = "a red circle on a beach"
    comp.num_images.value = 2
    # Stop arrives after the last image, before the run's end: the final status wins
    comp.progress_callbacks.append(lambda done, total: comp.stop_button.click() if done == total else None)
    run = comp.generate()
    assert not run.stopped and comp.status.value.startswith("done: 2/2") and comp.stop_button.disabled
    comp.progress_callbacks.clear()
    comp.stop()  # a late click (the button is disabled in the browser, but a message may be on its way)
    assert comp.status.value.startswith("done: 2/2")


def test_stop_race_in_background_thread(gen, tmp_path):
    """Stop pressed from another thread at random moments around a short run's end: never left on 'stopping'."""
    import threading
    import time

    c = Composer(gen, out_dir=tmp_path, background=True, preview=False)
    c.sampler.value, c.steps.value, c.num_images.value, c.scale.value = "ddim", 2, 2, 3.0
    c.text.value = "a green square"
    c.generate(wait=True)  # compiled
    for delay in np.linspace(0.0, 0.05, 12):
        c.generate(wait=False)
        t = threading.Timer(delay, c.stop)
        t.start()
        c.wait()
        t.join()
        time.sleep(0.01)
        assert c.status.value.startswith(("done", "stopped")), c.status.value
        assert c.stop_button.disabled and not c.generate_button.disabled


def test_results_update_in_place_and_widget_count_is_bounded(comp):
    comp.text.value = "a red circle on a beach"
    comp.num_images.value = 4
    comp.generate()
    tiles = comp.results_box.children
    assert len(tiles) == 4 and all(isinstance(t, ipywidgets.Image) for t in tiles)  # one widget per image
    seen = []
    comp.progress_callbacks.append(lambda done, total: seen.append(comp.results_box.children))
    comp.generate()
    comp.progress_callbacks.clear()
    # each image adds one tile; the tiles already shown are the same objects (updated in place, no rebuild)
    assert [len(ch) for ch in seen] == [1, 2, 3, 4] and all(a is b for a, b in zip(seen[1], seen[3]))
    assert not any(t in comp.results_box.children for t in tiles)  # the first run's tiles were replaced ...
    assert all(t.comm is None for t in tiles)  # ... and closed
    counts = []
    for _ in range(HISTORY_SHOWN + 3):
        comp.generate()
        counts.append(live_widgets())
    # once History is full, a run of 4 images leaves the kernel's widget count unchanged
    assert counts[-1] == counts[-2] == counts[-3], counts
    assert len(comp.history_box.children) == HISTORY_SHOWN and len(comp.history) == HISTORY_SHOWN + 5
    comp.num_images.value = 8  # a bigger run: 2 more widgets (an image and its layout) per more image
    comp.generate()
    assert live_widgets() - counts[-1] <= 2 * 4 + 2 * 4, live_widgets() - counts[-1]  # tiles + history thumbnails
    # context rows are rebuilt on every change; the replaced rows are closed too
    n0 = live_widgets()
    for _ in range(5):
        comp.add_context(rgb(1), "a dog", "subject")
        comp.remove_context(1)
    assert live_widgets() == n0


def test_remove_context_clears_the_stale_preview(gen, tmp_path):
    c = Composer(gen, out_dir=tmp_path, background=False, preview=True)
    c.add_context(rgb(1), "a dog", "subject")
    c.add_context(rgb(2), "watercolour", "style")
    c.text.value = "Generate [ref#1] in the style of [ref#2]"
    assert "<img" in c.preview.value
    c.remove_context(1)
    assert is_error(c) and "[ref#?]" in c.text.value
    assert "<img" not in c.preview.value and ui.PREVIEW_INVALID in c.preview.value  # not the two old contexts
    c.text.value = "Generate an image in the style of [ref#1]"
    assert not is_error(c) and "<img" in c.preview.value  # drawn again (one context)


def test_concurrent_events_do_not_leave_a_stale_preview(gen, tmp_path, monkeypatch):
    """JupyterLab >= 4.4 runs widget events in kernel subshells: a click may arrive while an older one still draws."""
    import threading
    import time

    c = Composer(gen, out_dir=tmp_path, background=False, preview=True)
    c.add_context(rgb(1), "a dog", "subject")
    c.text.value = "Generate [ref#1] on a beach"
    draw = Instruction.draw
    drawing = threading.Event()
    monkeypatch.setattr(Instruction, "draw", lambda self, *a, **k: (drawing.set(), time.sleep(0.3),
                                                                    draw(self, *a, **k))[2])
    slow = threading.Thread(target=c.add_context, args=(rgb(3), "output 1", "reference"))  # draws 2 contexts
    slow.start()
    assert drawing.wait(10)
    c.remove_context(1)  # meanwhile: [ref#1] -> [ref#?], invalid
    slow.join()
    assert is_error(c) and len(c.contexts) == 1 and "<img" not in c.preview.value


def test_two_generate_clicks_at_once_make_one_run(gen, tmp_path, monkeypatch):
    import threading
    import time

    c = Composer(gen, out_dir=tmp_path, background=True, preview=False)
    c.sampler.value, c.steps.value, c.num_images.value, c.scale.value = "ddim", 2, 1, 3.0
    c.text.value = "a green square"
    settings = c.settings
    monkeypatch.setattr(c, "settings", lambda: (time.sleep(0.2), settings())[1])  # a slow check before the run
    out = []
    clicks = [threading.Thread(target=lambda: out.append(c.generate(wait=True))) for _ in range(2)]
    for t in clicks:
        t.start()
    for t in clicks:
        t.join()
    assert sorted(r is None for r in out) == [False, True] and len(c.history) == 1
    assert "a run is in progress" in c.message.value and c.status.value.startswith("done: 1/1")
