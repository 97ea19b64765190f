"""`Composer`: write a multi-modal instruction (paper §2) in a notebook, see it drawn, and generate from it.

    from iimagen.ui import Composer
    Composer(Generator.load("data/checkpoints/instruct-imagen-tiny"))     # the last expression of a cell

What the widget does, top to bottom:

- **Instruction text**: pick a task template (`templates.render`, paper §3.2: the markers of the contexts already
  added, or placeholders, fill its `{ref1}`, `{ref2}`) or write free text; zero-shot compositions (§5.2) are in the
  same list.
- **Context** (up to the model's K slots): add images from the world gallery (world examples by task), from
  `data/examples/`, from an upload, or from an earlier output; give each a kind and a short text. Markers are numbered
  for you (`[ref#k]`, shown beside each context); removing context k renumbers the later markers in the text and
  turns `[ref#k]` itself into `[ref#?]`, which the validation then asks you to fix.
- **Preview**: the instruction drawn like the paper's Fig. 2 (`Instruction.draw`), with validation messages inline.
- **Settings**: sampler (ddim / dpm / ddpm), steps, guidance scale (text) and, optionally, a separate context scale
  and per-reference scales ("1=3": [ref#1] at 3, `diffusion.Guidance.references`), oscillating guidance (App. A.2.2),
  seed, number of images. Image j uses seed `seed + j`. The app starts from `DEFAULT_SETTINGS` (one place to change
  it); the *paper's recipe* button sets `PAPER_SETTINGS` (256-step DDPM, oscillating w = 25, App. A.2.2).
- **Generate / Stop**: images are made one at a time (each is one compiled sampling call), so Stop acts *between*
  images; completed images are kept. In Jupyter (Lab or classic) generation runs in a background thread so the Stop
  button is heard. Colab does not show widget updates made from a background thread (googlecolab/colabtools#3373),
  so there it runs in the foreground: the progress bar updates, and the cell's interrupt (stop) button stops the run
  between or during images, keeping what is done. `Composer(..., background=True/False)` overrides the choice.
  While the sampler compiles for new settings (the first image), an indeterminate bar runs instead of the 0 % one.
- **Results** (one image widget per output, added in place; widgets replaced are closed, so the kernel's widget count
  stays bounded), **Save** (instruction.json + context PNGs + output PNGs + settings.json) and a **History** of runs,
  each restorable (the last `HISTORY_SHOWN` are listed; `restore(i)` reaches every run).

Works with ipywidgets 7.7.1 (Colab) and 8.x. Everything is also callable from code (`add_context`, `generate`,
`save`, `restore`, `figure`), which is how the tests and notebook 07 drive it.
"""
from __future__ import annotations

import functools
import io
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import paths
from .instruction import KINDS, Context, Instruction, InstructionError, marker, to_rgb_uint8
from .pipeline import PAPER_SAMPLING, SAMPLING, parse_guidance

FREE_TEXT = "(free text)"
# The Composer's default sampling setting: the one place to change it. PAPER_SETTINGS is the paper's recipe
# (App. A.2.2), one click away in the app ("paper's recipe").
def _settings(sampling: dict) -> dict:
    """The Composer's settings for one of pipeline's sampling settings (its guidance words made a scale)."""
    g = parse_guidance(sampling["guidance"])
    return {"sampler": sampling["sampler"], "steps": sampling["steps"], "scale": g.scale, "context_scale": None,
            "oscillate": g.oscillate, "clip": sampling["clip"], "references": ""}


DEFAULT_SETTINGS = _settings(SAMPLING)
PAPER_SETTINGS = _settings(PAPER_SAMPLING)
PREVIEW_INVALID = "(the drawing returns when the instruction is valid)"
HISTORY_SHOWN = 10  # runs listed under History (older ones stay in `Composer.history`)
EMPTY_TEXT = ("text: the instruction text is empty; write it (point at context k with [ref#k]) or choose a template "
              "and press 'use template'")
# Library names -> the app's field names, in the messages the app shows.
_FIELDS = (("Instruction.text", "text"), ("Context.text", "context text"), ("Context.image", "context image"),
           ("--reference-guidance", "per-ref w"))
_COMPILED: set = set()  # sampling programs already compiled in this process (see Composer._compile_key)
_LEAD_MARKER = re.compile(r"^\s*\[ref#\d+\]\s*")
_ANY_MARKER = re.compile(r"\[ref#([1-9][0-9]*)\]")


# --------------------------------------------------------------------------------------------------------- helpers
def uploaded_files(value) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file in a `FileUpload.value`: ipywidgets 7 gives a dict name -> {'metadata',
    'content'}, ipywidgets 8 a tuple of dicts with 'name' and 'content' (a memoryview)."""
    if not value:
        return []
    if isinstance(value, dict):  # ipywidgets 7.x
        items = [(name, v.get("content", b"")) for name, v in value.items()]
    else:  # ipywidgets 8.x
        items = [(v.get("name", f"file_{i}"), v.get("content", b"")) for i, v in enumerate(value)]
    return [(str(name), bytes(content)) for name, content in items]


def image_from_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """Decode an uploaded image file to uint8 HxWx3; anything that is not an image raises InstructionError."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_rgb_uint8(im.copy(), f"upload {name!r}")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        if isinstance(e, InstructionError):
            raise
        raise InstructionError(f"upload {name!r} is not an image file ({type(e).__name__}); upload a PNG or JPEG "
                               "image") from None


def png_bytes(image: np.ndarray, size: int | None = None) -> bytes:
    """PNG bytes of a uint8 image, enlarged (nearest) to `size` px on its long side for display."""
    im = Image.fromarray(np.asarray(image))
    if size and max(im.size) != size:
        s = size / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def strip_marker(text: str) -> str:
    """'[ref#2] style image' -> 'style image' (the Composer numbers markers itself)."""
    return _LEAD_MARKER.sub("", text)


def renumber_after_removal(text: str, k: int) -> str:
    """Payload text after context k is removed: [ref#n] -> [ref#n-1] for n > k, and [ref#k] -> [ref#?]."""
    def sub(m):
        n = int(m.group(1))
        return m.group(0) if n < k else ("[ref#?]" if n == k else marker(n - 1))

    return _ANY_MARKER.sub(sub, text)


def ui_message(text: str) -> str:
    """A library error message in the app's words: the fields are named as the app labels them."""
    for lib, field_ in _FIELDS:
        text = text.replace(lib, field_)
    return text


def close_widget(w) -> None:
    """Close a widget, everything inside it (children) and its layout and style models (ipywidgets keeps every widget
    alive in the kernel until it is closed)."""
    import ipywidgets

    for c in getattr(w, "children", ()) or ():
        close_widget(c)
    for name in ("layout", "style"):
        sub = getattr(w, name, None) if name in getattr(w, "keys", ()) else None
        if isinstance(sub, ipywidgets.Widget):
            sub.close()
    w.close()


def live_widgets() -> int:
    """How many widgets the kernel holds open (ipywidgets 8: `widget._instances`; 7.x: `Widget.widgets`)."""
    import ipywidgets.widgets.widget as ww

    inst = getattr(ww, "_instances", None)
    return len(inst if inst is not None else ww.Widget.widgets)


def _in_colab() -> bool:
    return "google.colab" in sys.modules


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and hasattr(ip, "kernel")


def _serial(method):
    """Run the method under the Composer's edit lock. JupyterLab >= 4.4 hands widget events to kernel subshells,
    so two clicks can run at once in two threads (and Generate runs in a third): without the lock a slow drawing
    for an older state could land after a newer one (issue 34's stale preview)."""
    @functools.wraps(method)
    def locked(self, *a, **k):
        with self._edit:
            return method(self, *a, **k)
    return locked


@dataclass
class Run:
    """One generation: the instruction used, the settings, the images made (fewer than asked when stopped)."""

    instruction: Instruction
    settings: dict
    images: list = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------------- composer
class Composer:
    """An ipywidgets app to compose an `Instruction` and generate images with a `Generator` (see the module doc).

    generator:    an `iimagen.pipeline.Generator`.
    examples:     the folder of saved instructions (`data/examples/`, with `index.json`).
    out_dir:      default folder for Save (a numbered run_NNN subfolder per save).
    background:   run Generate in a thread (default: yes in Jupyter, no in Colab and outside a kernel).
    preview:      draw the instruction (Fig. 2 style) on every change.
    """

    def __init__(self, generator, examples=None, out_dir="out/ui", background: bool | None = None,
                 preview: bool = True, gallery_size: int = 4, thumb: int = 96):
        import ipywidgets as W

        self.W, self.generator = W, generator
        self.K = int(generator.cfg.K)
        self.examples_dir = Path(examples or paths.EXAMPLES)
        self.out_dir = Path(out_dir)
        self.background = (_in_kernel() and not _in_colab()) if background is None else bool(background)
        self.show_preview, self.gallery_size, self.thumb = preview, gallery_size, thumb
        self.contexts: list[dict] = []  # {'image': uint8 HxWx3, 'text': str (no marker), 'kind': str}
        self.results: list[np.ndarray] = []
        self._results_seed = 0
        self.history: list[Run] = []
        self.progress_callbacks: list = []  # f(done, total) after each image (tests press Stop from here)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # orders Stop against the end of a run (the status never ends on "stopping")
        self._edit = threading.RLock()  # one edit of the instruction at a time (see _serial)
        self._running = False
        self._thread: threading.Thread | None = None
        self._tiles: list = []  # one Image widget per result
        self._history_rows: list = []
        self._template_seed = 0
        self._drawn = None
        self._gallery, self._example_items, self._example_names, self._examples = [], [], [], {}
        self._build()
        self.refresh()

    # ------------------------------------------------------------------------------------------------- layout
    def _build(self):
        W = self.W
        from . import tasks, templates

        # Every row wraps (flex_flow "row wrap"), buttons size to their text (width "auto"): the app fits a notebook
        # column of ~780 px (JupyterLab at 1,280 px with the side panel open), tested in a browser
        # (tests/test_browser.py).
        lay = lambda w: W.Layout(width=w)
        auto = lambda: W.Layout(width="auto")
        row = lambda *ws: W.HBox(list(ws), layout=W.Layout(flex_flow="row wrap", align_items="center"))
        self.task = W.Dropdown(options=[FREE_TEXT, *templates.TASKS, *templates.ZERO_SHOT], value=FREE_TEXT,
                               description="template", layout=lay("300px"))
        self.caption = W.Text(value="a large red circle on a beach", description="caption", layout=lay("480px"))
        self.template_button = W.Button(description="use template", tooltip="fill the text from the template",
                                        layout=auto())
        self.rephrase_button = W.Button(description="another phrasing", layout=auto())
        self.text = W.Textarea(value="", placeholder="Generate an image of [ref#1] in the style of [ref#2] ...",
                               description="text", layout=W.Layout(width="95%", height="64px"),
                               continuous_update=False)
        # context sources
        names = [t for t in tasks.TASK_NAMES if t != "retrieval"]
        self.gallery_task = W.Dropdown(options=names, value="subject", description="world task", layout=lay("300px"))
        self.gallery_seed = W.IntText(value=0, description="seed", layout=lay("160px"))
        self.gallery_item = W.Dropdown(options=[], description="image", layout=lay("440px"))
        self.gallery_add = W.Button(description="add context", button_style="info", layout=auto())
        self.example_item = W.Dropdown(options=[], description="example", layout=lay("440px"))
        self.example_add = W.Button(description="add context", button_style="info", layout=auto())
        self.example_load = W.Button(description="load whole instruction", layout=auto())
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="upload image", layout=auto())
        self.upload_kind = W.Dropdown(options=list(KINDS), value="reference", description="kind", layout=lay("240px"))
        self.upload_text = W.Text(value="", placeholder="short text, e.g. 'a dog'", description="text",
                                  layout=lay("300px"))
        self.source_preview = W.Image(format="png", layout=W.Layout(width="64px", height="64px"))
        src = W.Tab(children=[
            W.VBox([row(self.gallery_task, self.gallery_seed), row(self.gallery_item, self.gallery_add)]),
            W.VBox([self.example_item, row(self.example_add, self.example_load)]),
            W.VBox([row(self.upload_kind, self.upload_text), self.upload]),
        ], layout=W.Layout(flex="1 1 560px", max_width="640px"))
        for i, t in enumerate(["world gallery", "data/examples", "upload"]):
            src.set_title(i, t)
        self.context_box = W.VBox([])
        self.message = W.HTML("")
        self.preview = W.HTML("")  # the instruction drawn (Fig. 2 style), or PREVIEW_INVALID
        # settings: DEFAULT_SETTINGS fills them at the end of __init__'s build
        self.sampler = W.Dropdown(options=["ddim", "dpm", "ddpm"], description="sampler", layout=lay("180px"))
        self.steps = W.BoundedIntText(value=1, min=1, max=1000, description="steps", layout=lay("160px"))
        self.seed = W.IntText(value=0, description="seed", layout=lay("160px"))
        self.num_images = W.BoundedIntText(value=4, min=1, max=64, description="images", layout=lay("160px"))
        self.paper_button = W.Button(description="paper's recipe", layout=auto(),
                                     tooltip="256-step DDPM, oscillating guidance w = 25, dynamic thresholding "
                                             "(App. A.2.2)")
        self.default_button = W.Button(description="kit default", layout=auto(),
                                       tooltip="the app's default sampling setting (iimagen.ui.DEFAULT_SETTINGS)")
        self.scale = W.BoundedFloatText(value=25.0, min=0.0, max=1000.0, step=0.5, description="guidance w",
                                        layout=lay("180px"))
        self.separate = W.Checkbox(value=False, description="separate context scale", indent=False, layout=auto())
        self.context_scale = W.BoundedFloatText(value=5.0, min=0.0, max=1000.0, step=0.5, description="context w",
                                                disabled=True, layout=lay("180px"))
        self.references = W.Text(value="", placeholder="I=W, e.g. 1=3", description="per-ref w",
                                 layout=lay("230px"))  # per-reference guidance: '1=3' guides [ref#1] at 3
        self.oscillate = W.Checkbox(value=True, description="oscillating guidance", indent=False, layout=auto())
        self.clip = W.Dropdown(options=["dynamic", "static", "none"], description="x0 clip", layout=lay("180px"))
        self.generate_button = W.Button(description="Generate", button_style="success", icon="play", layout=auto())
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    layout=auto())
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=lay("240px"))
        self.busy = W.HTML("")  # an indeterminate bar (<progress> without a value) while the sampler compiles
        self.status = W.Label("", layout=auto())
        self.results_box = W.HBox([], layout=W.Layout(flex_flow="row wrap"))
        self.use_item = W.Dropdown(options=[], description="output", layout=lay("240px"))
        self.use_button = W.Button(description="use as context", icon="plus", layout=auto(),
                                   tooltip="add the chosen output as the next context")
        self.save_dir = W.Text(value="", placeholder=f"{self.out_dir}/run_NNN", description="folder",
                               layout=lay("420px"))
        self.save_button = W.Button(description="Save run", icon="save", layout=auto())
        self.history_box = W.VBox([])

        h = lambda s: W.HTML(f"<b>{s}</b>")
        self.widget = W.VBox([
            h("1. Instruction text (paper §2)"), row(self.task, self.template_button, self.rephrase_button),
            self.caption, self.text,
            h(f"2. Context (up to {self.K} for this model)"), row(src, self.source_preview), self.context_box,
            self.message, self.preview,
            row(h("3. Settings"), self.paper_button, self.default_button),
            row(self.sampler, self.steps, self.seed, self.num_images),
            row(self.scale, self.separate, self.context_scale, self.references, self.oscillate, self.clip),
            row(self.generate_button, self.stop_button, self.progress, self.busy, self.status),
            h("Results"), self.results_box, row(self.use_item, self.use_button), row(self.save_dir, self.save_button),
            h("History"), self.history_box,
        ])
        for w, name in ((self.widget, "composer"), (self.message, "message"), (self.preview, "preview"),
                        (self.status, "status"), (self.busy, "busy"), (self.results_box, "results"),
                        (self.context_box, "contexts"), (self.history_box, "history")):
            w.add_class(f"iimagen-{name}")  # CSS hooks (the browser test finds the parts by them)
        self.set_settings(DEFAULT_SETTINGS)
        # events
        self.template_button.on_click(lambda _: self.use_template())
        self.rephrase_button.on_click(lambda _: self.use_template(new_phrasing=True))
        self.text.observe(lambda _: self.refresh(), "value")
        self.gallery_task.observe(lambda _: self._fill_gallery(), "value")
        self.gallery_seed.observe(lambda _: self._fill_gallery(), "value")
        self.gallery_item.observe(lambda _: self._show_source(self._gallery, self.gallery_item.value), "value")
        self.example_item.observe(lambda _: self._show_source(self._example_items, self.example_item.value), "value")
        self.gallery_add.on_click(lambda _: self._add_source(self._gallery, self.gallery_item.value))
        self.example_add.on_click(lambda _: self._add_source(self._example_items, self.example_item.value))
        self.example_load.on_click(lambda _: self._load_example())
        self.upload.observe(self._on_upload, "value")
        self.separate.observe(lambda c: setattr(self.context_scale, "disabled", not c["new"]), "value")
        self.paper_button.on_click(lambda _: self.set_settings(PAPER_SETTINGS))
        self.default_button.on_click(lambda _: self.set_settings(DEFAULT_SETTINGS))
        self.generate_button.on_click(lambda _: self.generate(wait=False))
        self.stop_button.on_click(lambda _: self.stop())
        self.use_button.on_click(lambda _: self.use_output(self.use_item.value))
        self.save_button.on_click(lambda _: self._save_clicked())
        self._fill_gallery()
        self._fill_examples()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------------------------------------- messages
    def _say(self, text: str, level: str = "info"):
        import html

        colour = {"error": "#b00020", "ok": "#1b7f3b", "info": "#444"}[level]
        self.message.value = f'<span style="color:{colour}">{html.escape(ui_message(text))}</span>'

    # ------------------------------------------------------------------------------------------------- sources
    def _fill_gallery(self):
        """World examples of the chosen task (`tasks.sample`): each context image, and the target."""
        from . import tasks

        R = self.generator.cfg.resolution
        R = R if R in (32, 64, 128) else 64
        try:
            exs = tasks.sample(self.gallery_task.value, self.gallery_size, int(self.gallery_seed.value), R)
        except ValueError as e:
            self._say(str(e), "error")
            return
        items = []  # (label, (image, text, kind)); the dropdown's values are indices into this list
        for i, ex in enumerate(exs, start=1):
            for k, c in enumerate(ex.instruction.contexts, start=1):  # "1. [ref#2] subject: ...": one label each
                items.append((f"{i}. {marker(k)} {c.kind}: {strip_marker(c.text)}",
                              (c.image, strip_marker(c.text), c.kind)))
            cap = str(ex.truth.get("caption") or "")
            items.append((f"{i}. target: {cap[:60]}", (ex.target, cap, "reference")))
        self._gallery = items
        self.gallery_item.options = [(lab, j) for j, (lab, _) in enumerate(items)]
        if items:
            self.gallery_item.value = 0
            self._show_source(items, 0)

    def _fill_examples(self):
        """Every context image (and target) of the saved instructions in `data/examples/`."""
        self._examples, items = {}, []
        index = self.examples_dir / "index.json"
        if not index.is_file():
            return
        for e in json.loads(index.read_text()).get("examples", []):
            folder = self.examples_dir / e["folder"]
            try:
                ins = Instruction.load(folder)
            except InstructionError:
                continue
            self._examples[e["folder"]] = ins
            for c in ins.contexts:
                items.append((e["folder"], f"{e['folder']}: {c.text} ({c.kind})",
                              (c.image, strip_marker(c.text), c.kind)))
            if (folder / "target.png").is_file():
                items.append((e["folder"], f"{e['folder']}: target image",
                              (np.asarray(Image.open(folder / "target.png").convert("RGB")), "", "reference")))
        self._example_items = [(lab, item) for _, lab, item in items]
        self._example_names = [name for name, _, _ in items]
        self.example_item.options = [(lab, j) for j, (_, lab, _) in enumerate(items)]

    def _show_source(self, items, j):
        if j is not None:
            self.source_preview.value = png_bytes(items[j][1][0], 64)

    def _add_source(self, items, j):
        if j is not None:
            self.add_context(*items[j][1])

    @_serial
    def _load_example(self):
        """Replace the text and contexts by the instruction of the selected example."""
        if self.example_item.value is not None:
            self.load_instruction(self._examples[self._example_names[self.example_item.value]])

    @_serial
    def _on_upload(self, change):
        files = uploaded_files(change["new"])
        if not files:
            return
        for name, data in files:
            try:
                image = image_from_bytes(data, name)
            except InstructionError as e:
                self._say(str(e), "error")
                continue
            self.add_context(image, self.upload_text.value or name.rsplit(".", 1)[0], self.upload_kind.value)
        self._clear_upload()

    def _clear_upload(self):
        """Empty the FileUpload so the same file can be uploaded again (7.x: read-only dict; 8.x: a tuple)."""
        try:
            self.upload.set_trait("value", {} if isinstance(self.upload.value, dict) else ())
        except Exception:  # an old frontend may refuse; the next upload still works when it differs
            pass

    # ------------------------------------------------------------------------------------------------- contexts
    @_serial
    def add_context(self, image, text: str = "", kind: str = "reference") -> bool:
        """Append a context (marker numbered for you); False with a message when it cannot be added."""
        if len(self.contexts) >= self.K:
            self._say(f"this model has K={self.K} context slots; remove a context before adding another", "error")
            return False
        try:
            image = to_rgb_uint8(image, "context image")
            kind = kind if kind in KINDS else "reference"
            Context(image, strip_marker(text), kind)
        except InstructionError as e:
            self._say(str(e), "error")
            return False
        self.contexts.append({"image": image, "text": strip_marker(text), "kind": kind})
        self._rebuild_contexts()
        return True

    @_serial
    def remove_context(self, k: int):
        """Remove context k (1-based); markers in the text are renumbered, [ref#k] becomes [ref#?]."""
        if not 1 <= k <= len(self.contexts):
            return
        del self.contexts[k - 1]
        self._rebuild_contexts(refresh=False)
        self.text.value = renumber_after_removal(self.text.value, k)  # triggers refresh when changed
        self.refresh()

    @_serial
    def insert_marker(self, k: int):
        c = self.contexts[k - 1]
        self.text.value = (self.text.value.rstrip() + f" {marker(k)} {c['text']}".rstrip()).strip()

    @_serial
    def _rebuild_contexts(self, refresh: bool = True):
        W = self.W
        old, rows = self.context_box.children, []
        for k, c in enumerate(self.contexts, start=1):
            img = W.Image(value=png_bytes(c["image"], 64), format="png", layout=W.Layout(width="64px"))
            kind = W.Dropdown(options=list(KINDS), value=c["kind"], layout=W.Layout(width="120px"))
            text = W.Text(value=c["text"], placeholder="short text, e.g. 'style image'", continuous_update=False,
                          layout=W.Layout(width="260px"))
            ins = W.Button(description=f"insert {marker(k)}", layout=W.Layout(width="auto"))
            rm = W.Button(description="remove", icon="trash", layout=W.Layout(width="auto"))
            kind.observe(lambda ch, c=c: (c.update(kind=ch["new"]), self.refresh()), "value")
            text.observe(lambda ch, c=c: (c.update(text=ch["new"]), self.refresh()), "value")
            ins.on_click(lambda _, k=k: self.insert_marker(k))
            rm.on_click(lambda _, k=k: self.remove_context(k))
            rows.append(W.HBox([img, W.HTML(f"<b>{marker(k)}</b>"), kind, text, ins, rm],
                               layout=W.Layout(flex_flow="row wrap", align_items="center")))
        self.context_box.children = rows
        for r in old:  # replaced rows are closed: the kernel holds at most K rows' widgets
            close_widget(r)
        if refresh:
            self.refresh()

    # ------------------------------------------------------------------------------------------------- text
    @_serial
    def use_template(self, new_phrasing: bool = False):
        """Fill the text from the chosen task's template (`templates.render`): context k's marker + text fill
        `{refk}`; a ref with no context yet gets a placeholder naming what to add."""
        from . import templates

        task = self.task.value
        if task == FREE_TEXT:
            self._say("choose a task in 'template' first (or write the text yourself)", "info")
            return
        self._template_seed += int(new_phrasing)
        spec = templates.spec(task)
        refs = []
        for i, what in enumerate(spec["refs"], start=1):
            c = self.contexts[i - 1] if i <= len(self.contexts) else None
            refs.append(f"{marker(i)} {c['text'] or c['kind'] if c else what + ' image'}")
        control = next((c["kind"] for c in self.contexts if c["kind"] in templates.CONTROLS), None)
        try:
            self.text.value = templates.render(task, self._template_seed, self.caption.value if spec["caption"]
                                               else None, refs, control=control if task in ("control_subject",
                                                                                            "control_style") else None)
        except ValueError as e:
            self._say(str(e), "error")

    @_serial
    def clear(self):
        """Empty the text and remove every context."""
        self.contexts = []
        self._rebuild_contexts(refresh=False)
        self.text.value = ""
        self.refresh()

    @_serial
    def load_instruction(self, instruction: Instruction):
        """Replace text and contexts by `instruction`'s."""
        self.contexts = [{"image": c.image, "text": strip_marker(c.text), "kind": c.kind}
                         for c in instruction.contexts[:self.K]]
        self._rebuild_contexts(refresh=False)
        self.text.value = instruction.text
        self.refresh()
        if len(instruction.contexts) > self.K:
            self._say(f"the instruction has {len(instruction.contexts)} contexts; this model takes {self.K}; "
                      "the first ones were kept", "error")

    def instruction(self) -> Instruction:
        """The instruction as composed now (raises InstructionError when invalid)."""
        return Instruction(self.text.value, tuple(Context(c["image"], c["text"], c["kind"]) for c in self.contexts))

    @_serial
    def refresh(self, strict: bool = False):
        """Validate the instruction; show the error, or draw it (Fig. 2 style) when it changed. An empty text is a
        hint, not an error, until Generate is pressed (`strict`). While the instruction is invalid the preview says
        so instead of showing an older instruction."""
        try:
            ins = self.instruction()
        except InstructionError as e:
            empty = not self.text.value.strip()
            if empty and not strict:
                self._say("Write the instruction text (or choose a template and press 'use template'); point at "
                          "context k with [ref#k].", "info")
            else:
                self._say(EMPTY_TEXT if empty else str(e), "error")
            self._clear_preview()
            return None
        unused = [k for k in range(1, len(ins.contexts) + 1) if k not in ins.markers]
        self._say(f"valid instruction: {len(ins.contexts)} context(s)"
                  + (f"; the text never mentions {', '.join(marker(k) for k in unused)}" if unused else ""), "ok")
        key = (ins.text, tuple((c.text, c.kind, id(c_["image"])) for c, c_ in zip(ins.contexts, self.contexts)))
        if self.show_preview and key != self._drawn:
            # the figure as an <img> in an HTML widget (ipywidgets 7 and 8, Colab). Not an Output widget: its
            # frontend sends its outputs back to the kernel, and that echo can undo a newer preview (issue 34)
            import base64

            self._drawn = key
            buf = io.BytesIO()
            ins.draw().savefig(buf, format="png", dpi=72, bbox_inches="tight")
            self.preview.value = (f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" '
                                  f'alt="{_html(repr(ins))}" style="max-width:100%">')
        return ins

    def _clear_preview(self):
        if self.show_preview and self._drawn != "invalid":
            self._drawn = "invalid"
            self.preview.value = f"<i style=\"color:#777\">{PREVIEW_INVALID}</i>"

    # ------------------------------------------------------------------------------------------------- settings
    def settings(self) -> dict:
        return {"sampler": self.sampler.value, "steps": int(self.steps.value), "scale": float(self.scale.value),
                "context_scale": float(self.context_scale.value) if self.separate.value else None,
                "oscillate": bool(self.oscillate.value), "seed": int(self.seed.value),
                "num_images": int(self.num_images.value), "clip": self.clip.value,
                "references": self.references.value.strip()}

    @_serial
    def set_settings(self, s: dict):
        """Set the settings widgets from a dict of `settings()` (missing keys are kept): `DEFAULT_SETTINGS`,
        `PAPER_SETTINGS`, or a run's."""
        for name in ("sampler", "steps", "scale", "oscillate", "seed", "num_images", "clip", "references"):
            if name in s:
                getattr(self, name).value = s[name]
        if "context_scale" in s:
            self.separate.value = s["context_scale"] is not None
            if s["context_scale"] is not None:
                self.context_scale.value = s["context_scale"]

    @staticmethod
    def guidance(s: dict):
        from .diffusion import Guidance
        from .pipeline import parse_references

        return Guidance(s["scale"], s["context_scale"], s["oscillate"], parse_references(s.get("references")))

    # ------------------------------------------------------------------------------------------------- generate
    def generate(self, wait: bool = True) -> Run | None:
        """Generate `num_images` images for the current instruction, one at a time (Stop acts between images).

        In background mode the run happens in a thread; `wait=True` joins it. Returns the `Run` (None when the
        instruction or the settings are invalid, with the message shown)."""
        with self._lock:  # two Generate clicks can arrive at once (kernel subshells): one run at a time
            if self._running:
                self._say("a run is in progress; press Stop or wait", "error")
                return None
            self._running = True
        run = None
        try:
            ins = self.refresh(strict=True)
            if ins is not None:
                s = self.settings()
                guidance = self.guidance(s)
                over = [i for i, _ in guidance.references if i > len(ins.contexts)]
                if over:
                    raise ValueError(f"per-ref w {s['references']!r} names {marker(over[0])}, but the instruction "
                                     f"has {len(ins.contexts)} context(s); name one of them or empty the field")
                run = Run(ins, s)
        except ValueError as e:
            self._say(str(e), "error")
        finally:
            if run is None:
                with self._lock:
                    self._running = False
        if run is None:
            return None
        self._stop.clear()
        self.generate_button.disabled, self.stop_button.disabled = True, False
        self.progress.max, self.progress.value = s["num_images"], 0
        self._set_results([], s["seed"])
        if self.background:
            self._thread = threading.Thread(target=self._run, args=(run, guidance), daemon=True)
            self._thread.start()
            if wait:
                self._thread.join()
        else:
            self._run(run, guidance)
        return run

    def stop(self):
        """Ask the run to stop after the image in progress (nothing to do when no run is going on)."""
        with self._lock:
            if not self._running:
                return
            self._stop.set()
            self.status.value = "stopping after the current image..."

    def wait(self):
        """Block until a background run ends."""
        if self._thread is not None:
            self._thread.join()

    def _compile_key(self, s: dict, guidance) -> tuple:
        """What makes `diffusion.sample` compile a new program for this model (its static plan; batch 1)."""
        return (id(getattr(self.generator, "model", self.generator)), s["sampler"], s["steps"], guidance.n_base,
                tuple(i for i, _ in guidance.references), bool(guidance.oscillate), s["clip"])

    def _busy(self, on: bool):
        """An indeterminate bar in place of the progress bar (the compile step has no fraction to show)."""
        self.busy.value = '<progress style="width:240px" title="compiling"></progress>' if on else ""
        self.progress.layout.display = "none" if on else None

    def _run(self, run: Run, guidance):
        s, t0, n = run.settings, time.perf_counter(), run.settings["num_images"]
        key = self._compile_key(s, guidance)
        try:
            for j in range(n):
                with self._lock:  # a Stop pressed now is seen here, and its message is not overwritten
                    if self._stop.is_set():
                        run.stopped = True
                        break
                    compiling = key not in _COMPILED
                    self.status.value = f"image {j + 1}/{n}" + (": compiling the sampler for these settings "
                                                                "(first use)..." if compiling else "")
                if compiling:
                    self._busy(True)
                img = self.generator.generate(run.instruction, sampler=s["sampler"], steps=s["steps"],
                                              guidance=guidance, seed=s["seed"] + j, clip=s["clip"],
                                              progress=False)[0]
                _COMPILED.add(key)
                if compiling:
                    self._busy(False)
                run.images.append(img)
                self.results.append(img)
                self._add_tile(len(self.results) - 1)
                self.progress.value = j + 1
                for f in self.progress_callbacks:
                    f(j + 1, n)
        except KeyboardInterrupt:  # the kernel's interrupt button, in a foreground run
            run.stopped = True
        except Exception as e:  # noqa: BLE001 - shown in the UI; the composer's state stays as it was
            self._say(f"generation failed: {type(e).__name__}: {e}", "error")
        finally:
            with self._lock:  # from here on Stop does nothing: the run is over
                self._running = False
                run.stopped = run.stopped or (self._stop.is_set() and len(run.images) < n)
            self._busy(False)
            run.seconds = time.perf_counter() - t0
            if run.images:
                self.history.append(run)
                self._add_history(len(self.history))
            self.generate_button.disabled, self.stop_button.disabled = False, True
            self.status.value = (f"{'stopped' if run.stopped else 'done'}: {len(run.images)}/{n} image(s) in "
                                 f"{run.seconds:.1f} s")

    # ------------------------------------------------------------------------------------------------- results
    def _tile(self, j: int):
        return self.W.Image(value=png_bytes(self.results[j], self.thumb), format="png",
                            layout=self.W.Layout(width=f"{self.thumb}px", height=f"{self.thumb}px", margin="2px"))

    def _set_results(self, images, seed: int):
        """Show `images` (made with seeds seed, seed + 1, ...); the tiles they replace are closed."""
        old = self._tiles
        self.results, self._results_seed = list(images), seed
        self._tiles = [self._tile(j) for j in range(len(self.results))]
        self.results_box.children = tuple(self._tiles)
        for t in old:
            close_widget(t)
        self._fill_use()

    def _add_tile(self, j: int):
        """One new tile for result j; the tiles already shown stay as they are (no flicker, no new widgets)."""
        t = self._tile(j)
        self._tiles.append(t)
        self.results_box.children = (*self.results_box.children, t)
        self._fill_use()

    def _fill_use(self):
        keep = self.use_item.value
        self.use_item.options = [(f"image {j + 1} (seed {self._results_seed + j})", j)
                                 for j in range(len(self.results))]
        self.use_item.value = keep if keep is not None and keep < len(self.results) else (0 if self.results else None)

    def use_output(self, j: int | None) -> bool:
        """Add result j (0-based; "image j+1" under Results) as the next context."""
        if j is None or not 0 <= j < len(self.results):
            self._say("no output to use yet: generate first", "error")
            return False
        return self.add_context(self.results[j], f"output {j + 1}", "reference")

    # ------------------------------------------------------------------------------------------------- history
    def _add_history(self, i: int):
        W = self.W
        run = self.history[i - 1]
        s = run.settings
        cs = ("" if s["context_scale"] is None else f", context w={s['context_scale']}") + (
            f", per-ref {s['references']}" if s.get("references") else "")
        desc = (f"<b>run {i}</b>: {s['sampler']} x{s['steps']}, w={s['scale']}{cs}, "
                f"{'oscillating' if s['oscillate'] else 'constant'}, seed {s['seed']}, "
                f"{len(run.images)}/{s['num_images']} image(s){' (stopped)' if run.stopped else ''}<br>"
                f"<i>{_html(run.instruction.text)}</i>")
        thumbs = [W.Image(value=png_bytes(im, 48), format="png") for im in run.images[:8]]
        restore = W.Button(description="restore", icon="undo", layout=W.Layout(width="auto"))
        restore.on_click(lambda _, i=i: self.restore(i))
        rows = [W.VBox([W.HTML(desc), W.HBox([restore, *thumbs], layout=W.Layout(flex_flow="row wrap"))]),
                *self._history_rows]
        self._history_rows = rows[:HISTORY_SHOWN]
        self.history_box.children = tuple(self._history_rows)
        for r in rows[HISTORY_SHOWN:]:  # older runs leave the list (and the kernel); restore(i) still reaches them
            close_widget(r)

    @_serial
    def restore(self, i: int):
        """Bring back run i (1-based): its instruction, settings and images."""
        if self._running:
            self._say("a run is in progress; press Stop or wait", "error")
            return
        if not 1 <= i <= len(self.history):
            self._say(f"there is no run {i}; runs are 1..{len(self.history)}", "error")
            return
        run = self.history[i - 1]
        self.load_instruction(run.instruction)
        self.set_settings(run.settings)
        self._set_results(run.images, run.settings["seed"])
        self.status.value = f"restored run {i}"

    # ------------------------------------------------------------------------------------------------- save
    def save(self, folder=None, run: int | None = None) -> Path:
        """Write run `run` (default: the last; the current instruction alone when there is none) to `folder`:
        instruction.json + context_k.png (`Instruction.save`), output_j.png, settings.json."""
        if run is None and self.history:
            run = len(self.history)
        if folder is None or str(folder).strip() == "":
            n = 1
            while (self.out_dir / f"run_{n:03d}").exists():
                n += 1
            folder = self.out_dir / f"run_{n:03d}"
        folder = Path(folder)
        if run is None:
            ins, images, settings = self.instruction(), [], self.settings()
        else:
            r = self.history[run - 1]
            ins, images, settings = r.instruction, r.images, dict(r.settings, stopped=r.stopped)
        ins.save(folder)
        for j, img in enumerate(images):
            Image.fromarray(img).save(folder / f"output_{j}.png")
        (folder / "settings.json").write_text(json.dumps(dict(settings, images=len(images)), indent=1) + "\n")
        return folder

    def _save_clicked(self):
        try:
            folder = self.save(self.save_dir.value)
        except (ValueError, OSError) as e:
            self._say(f"not saved: {e}", "error")
            return
        self._say(f"saved to {folder}", "ok")

    # ------------------------------------------------------------------------------------------------- static view
    def figure(self, run: int | None = None):
        """A matplotlib figure of a run (default: the last): its context images, then its outputs, with the text."""
        import textwrap

        import matplotlib.pyplot as plt

        if not self.history:
            raise ValueError("Composer.figure: no run yet; press Generate (or call generate()) first")
        r = self.history[(run or len(self.history)) - 1]
        ctx, outs = r.instruction.contexts, r.images
        n = len(ctx) + len(outs)
        fig, axes = plt.subplots(1, n, figsize=(1.8 * n, 2.6), squeeze=False)
        plt.close(fig)
        for a, c in zip(axes[0], ctx):
            a.imshow(c.image, interpolation="nearest")
            a.set_title("\n".join(textwrap.wrap(f"{c.text} ({c.kind})", 22)), fontsize=8)
        for j, (a, img) in enumerate(zip(axes[0, len(ctx):], outs)):
            a.imshow(img, interpolation="nearest")
            a.set_title(f"output {j + 1}\nseed {r.settings['seed'] + j}", fontsize=8)
        for a in axes[0]:
            a.set_xticks([]), a.set_yticks([])
        s = r.settings
        fig.suptitle("\n".join(textwrap.wrap(r.instruction.text, 110)) + f"\n[{s['sampler']} x{s['steps']}, "
                     f"w={s['scale']}{'' if s['context_scale'] is None else ', context w=' + str(s['context_scale'])}"
                     f"{', per-ref ' + s['references'] if s.get('references') else ''}"
                     f"{', oscillating' if s['oscillate'] else ''}]", fontsize=8)
        fig.tight_layout()
        return fig


def _html(text: str) -> str:
    import html

    return html.escape(text)
