"""The input pipeline: batches of docs/contracts.md for stage 0, 1 and 2 (paper §3.2), deterministic in (seed, step).

    >>> loader = Loader(stage=2, batch_size=16, resolution=32, seed=0)
    >>> for step, batch in loader:       # batch: image, text_ids, ctx_image, ctx_ids, ctx_mask, task_id
    ...     ...

- stage 0: text-to-image only (the stand-in for the pre-trained Imagen): raw captions, empty context, 10 % of the
  texts dropped (all pad) for classifier-free guidance.
- stage 1: retrieval-augmented training (App. A.3.1) from a `tasks.RetrievalPool`: target + 3 neighbours with raw
  captions; 10 % drop text + context, 10 % drop context.
- stage 2: the instruction-tuning mixture (`tasks.STAGE2_MIXTURE`, or `mixture=`).

`variant` builds the baselines of paper Table 3: `"no_instruction"` (the multi-task model trained on raw inputs: the
text is only the target caption, or empty for style transfer; the contexts keep their images and short texts) and
`"single_task=<task>"` (one task only). Example j of step s is drawn from `np.random.default_rng([seed, s, j])`, so a
run resumed at `start_step` sees exactly the batches it would have seen, and with several hosts each host builds only
its slice of the global batch (`jax.process_index()` of `jax.process_count()`): distinct examples, same global batch.
Batches are built ahead in a background thread (`prefetch`), optionally by `workers` processes.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import replace

import numpy as np

from . import tasks as T
from .world import check_resolution

STAGES = (0, 1, 2)
TEXT_LEN, CTX_TEXT_LEN = 64, 32


class DataError(ValueError):
    """Bad loader arguments; the message names the field and the fix."""


def parse_variant(variant: str | None) -> tuple[str | None, str | None]:
    """None | 'no_instruction' | 'single_task=<task>' -> (kind, task)."""
    if variant in (None, "", "default"):
        return None, None
    if variant == "no_instruction":
        return "no_instruction", None
    if isinstance(variant, str) and variant.startswith("single_task="):
        task = variant.split("=", 1)[1]
        if task not in T.STAGE2_TASKS:
            raise DataError(f"variant={variant!r}: single_task must be one of {', '.join(T.STAGE2_TASKS)}")
        return "single_task", task
    raise DataError(f"variant={variant!r} is unknown; use None, 'no_instruction' or 'single_task=<task>' "
                    f"(tasks: {', '.join(T.STAGE2_TASKS)})")


class Loader:
    """Batches for `stage` (0, 1, 2): iterating yields `(step, batch)` from `start_step` on, forever (or `steps`)."""

    def __init__(self, stage: int, batch_size: int, resolution: int, seed: int = 0, K: int = 3, start_step: int = 0,
                 variant: str | None = None, mixture: dict | None = None, tokenizer=None, pool_size: int = 2048,
                 prefetch: int = 4, steps: int | None = None, text_len: int = TEXT_LEN,
                 ctx_text_len: int = CTX_TEXT_LEN, process_index: int | None = None,
                 process_count: int | None = None, pool=None):
        if stage not in STAGES:
            raise DataError(f"stage={stage!r} is unknown; use 0 (text-to-image), 1 (retrieval) or 2 (mixture)")
        self.R = check_resolution(resolution)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DataError(f"batch_size={batch_size!r} must be a positive int")
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if batch_size % process_count:
            raise DataError(f"batch_size={batch_size} (global) must be divisible by the {process_count} hosts")
        self.stage, self.batch_size, self.seed, self.K = stage, int(batch_size), int(seed), int(K)
        self.start_step, self.steps, self.prefetch = int(start_step), steps, int(prefetch)
        self.variant, self.single = parse_variant(variant)
        if stage != 2 and self.variant:
            raise DataError(f"variant={variant!r} applies to stage 2 only (the baselines of paper Table 3)")
        self.mixture = T.check_mixture({self.single: 1.0} if self.single else mixture) if stage == 2 else None
        self.text_len, self.ctx_text_len = text_len, ctx_text_len
        self.local = self.batch_size // process_count
        self.offset = process_index * self.local
        if tokenizer is None:
            from .tokenizer import load_tokenizer

            tokenizer = load_tokenizer()
        self.tok = tokenizer
        self.pool = (pool or T.RetrievalPool(pool_size, seed=self.seed)) if stage == 1 else None

    # ------------------------------------------------------------------------------------------- examples
    def example(self, step: int, j: int) -> T.Example:
        """Example j (global index) of batch `step`."""
        rng = np.random.default_rng([self.seed, int(step), int(j)])
        if self.stage == 1:
            return self.pool.example(int(rng.integers(len(self.pool.clusters))), rng, self.R)
        if self.stage == 0:
            spec = T.draw_spec("text_to_image", rng, training=True)
            spec = replace(spec, text=spec.caption, drop="all" if rng.random() < T.DROP_P else None)
        else:
            spec = T.draw_mixture_spec(rng, self.mixture)
        ex = T.realize(spec, self.R)
        return ex

    def _text(self, ex: T.Example) -> str | None:
        """The payload text the model sees: None = dropped (all pad)."""
        if ex.drop == "all":
            return None
        if self.variant == "no_instruction":
            return ex.truth["caption"]  # None for style transfer: no text at all
        return ex.instruction.text

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's part of batch `step` (docs/contracts.md): image, text_ids, ctx_image, ctx_ids, ctx_mask,
        task_id."""
        from .instruction import batch_instructions

        exs = [self.example(step, self.offset + j) for j in range(self.local)]
        b = batch_instructions([e.instruction for e in exs], self.tok, self.R, self.K, self.text_len,
                               self.ctx_text_len)
        texts = [self._text(e) for e in exs]
        if any(t != e.instruction.text for t, e in zip(texts, exs)):
            ids = self.tok.encode([t or "" for t in texts], self.text_len)
            ids[[t is None for t in texts]] = 0
            b["text_ids"] = ids.astype(np.int32)
        b["image"] = np.stack([e.target for e in exs]).astype(np.float32) / 127.5 - 1.0
        b["task_id"] = np.asarray([e.task_id for e in exs], np.int32)
        return b

    # ------------------------------------------------------------------------------------------- iteration
    def __iter__(self):
        q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()
        end = None if self.steps is None else self.start_step + self.steps

        def work():
            step = self.start_step
            try:
                while not stop.is_set() and (end is None or step < end):
                    item = (step, self.batch(step))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    step += 1
                q.put(None)
            except BaseException as e:  # surface errors in the consumer
                q.put(e)

        th = threading.Thread(target=work, daemon=True, name="iimagen-loader")
        th.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
