"""The input pipeline: batches of docs/contracts.md for stage 0, 1 and 2 (paper §3.2), deterministic in (seed, step).

    >>> loader = Loader(stage=2, batch_size=16, resolution=32, seed=0)
    >>> for step, batch in loader:       # batch: image, text_ids, ctx_image, ctx_ids, ctx_mask, task_id
    ...     ...

- stage 0: text-to-image only (the stand-in for the pre-trained Imagen): raw captions, empty context, 10 % of the
  texts dropped (all pad) for classifier-free guidance.
- stage 1: retrieval-augmented training (App. A.3.1) from a `tasks.RetrievalPool`: target + 3 neighbours with raw
  captions (subjects by nonce names unless `anonymous=False`); 10 % drop text + context, 10 % drop context.
- stage 2: the instruction-tuning mixture (`tasks.STAGE2_MIXTURE`, or `mixture=`). The paper does not say which
  conditions stage 2 drops (none here by default). `ref_drop=p` (the kit's addition): with probability p one of an
  example's references, chosen uniformly, is masked out (its slot empty, the text unchanged), which is exactly what
  the per-reference guidance branch asks at sampling (`diffusion.Guidance.references`); the draw comes from
  `default_rng([seed, s, j, 1])`, so the rest of the batch is the same bytes as without it.

`variant` builds the baselines of paper Table 3: `"no_instruction"` (the multi-task model trained on raw inputs: the
text is only the target caption, or empty for style transfer; the contexts keep their images and short texts) and
`"single_task=<task>"` (one task only). Example j of step s is drawn from `np.random.default_rng([seed, s, j])`, so a
run resumed at `start_step` sees exactly the batches it would have seen, and with several hosts each host builds only
its slice of the global batch (`jax.process_index()` of `jax.process_count()`): distinct examples, same global batch.
Batches are built ahead (`prefetch` of them) by `workers` processes (default: one per core, at most 16), each
building whole batches for its own steps (step s goes to worker s mod n, so the order is restored by step and the
batches are the same bytes as with `workers=0`, which builds them in one background thread). The workers are
started with "spawn" (safe after jax is imported in the parent; they import numpy, never jax) and receive the
loader's state, including the stage-1 `RetrievalPool` built once in the parent. `close()`, garbage collection, the
end of the `for` loop or a KeyboardInterrupt stop them (terminate + join: no zombies).
"""
from __future__ import annotations

import copy
import hashlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import traceback
import weakref
from dataclasses import replace

import numpy as np

from . import tasks as T
from .world import check_resolution

STAGES = (0, 1, 2)
TEXT_LEN, CTX_TEXT_LEN = 64, 32


class DataError(ValueError):
    """Bad loader arguments; the message names the field and the fix."""


def parse_variant(variant: str | None) -> tuple[str | None, str | None]:
    """None | 'instruct' | 'no_instruction' | 'single_task=<task>' -> (kind, task): the one parser of the training
    variants (paper Table 3's baselines), used by training, the loader and evaluation."""
    if variant in (None, "", "default", "instruct"):
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
    """Batches for `stage` (0, 1, 2): iterating yields `(step, batch)` from `start_step` on, forever (or `steps`).
    `workers`: None = one process per core (at most 16), 0 = build in a background thread of this process."""

    def __init__(self, stage: int, batch_size: int, resolution: int, seed: int = 0, K: int = 3, start_step: int = 0,
                 variant: str | None = None, mixture: dict | None = None, tokenizer=None, pool_size: int = 2048,
                 prefetch: int = 4, steps: int | None = None, text_len: int = TEXT_LEN,
                 ctx_text_len: int = CTX_TEXT_LEN, process_index: int | None = None,
                 process_count: int | None = None, pool=None, workers: int | None = None, anonymous: bool = True,
                 ref_drop: float = 0.0):
        if stage not in STAGES:
            raise DataError(f"stage={stage!r} is unknown; use 0 (text-to-image), 1 (retrieval) or 2 (mixture)")
        self.R = check_resolution(resolution)
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DataError(f"batch_size={batch_size!r} must be a positive int")
        if workers is None:
            workers = min(os.cpu_count() or 1, 16)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
            raise DataError(f"workers={workers!r} must be None (one per core) or an int >= 0 (0 = no processes)")
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if batch_size % process_count:
            raise DataError(f"batch_size={batch_size} (global) must be divisible by the {process_count} hosts")
        self.stage, self.batch_size, self.seed, self.K = stage, int(batch_size), int(seed), int(K)
        self.start_step, self.steps, self.prefetch = int(start_step), steps, int(prefetch)
        self.workers = int(workers)
        self.anonymous = bool(anonymous)  # stages 1-2: nonce subject names; stage 2: unnamed style refs (draw_spec)
        self.variant, self.single = parse_variant(variant)
        if stage != 2 and self.variant:
            raise DataError(f"variant={variant!r} applies to stage 2 only (the baselines of paper Table 3)")
        self.mixture = T.check_mixture({self.single: 1.0} if self.single else mixture) if stage == 2 else None
        if isinstance(ref_drop, bool) or not isinstance(ref_drop, (int, float)) or not 0 <= ref_drop <= 1:
            raise DataError(f"ref_drop={ref_drop!r} must be a probability in [0, 1]")
        if ref_drop and stage != 2:
            raise DataError(f"ref_drop={ref_drop} applies to stage 2 only (stage 1 has the paper's own dropout)")
        self.ref_drop = float(ref_drop)
        self.text_len, self.ctx_text_len = text_len, ctx_text_len
        self.local = self.batch_size // process_count
        self.offset = process_index * self.local
        if tokenizer is None:
            from .tokenizer import load_tokenizer

            tokenizer = load_tokenizer()
        self.tok = tokenizer
        self.pool = (pool or T.RetrievalPool(pool_size, seed=self.seed)) if stage == 1 else None
        self._ids: dict = {}  # (text, length) -> token ids: an LRU-free memo, cleared when it grows too big
        self._runs: weakref.WeakSet = weakref.WeakSet()  # live iterators, stopped by close()
        self.pids: list[int] = []  # worker processes of the latest iteration

    # ------------------------------------------------------------------------------------------- examples
    def example(self, step: int, j: int, with_truth: bool = True) -> T.Example:
        """Example j (global index) of batch `step`."""
        rng = np.random.default_rng([self.seed, int(step), int(j)])
        if self.stage == 1:
            return self.pool.example(int(rng.integers(len(self.pool.clusters))), rng, self.R, with_truth,
                                     anonymous=self.anonymous)
        if self.stage == 0:
            spec = T.draw_spec("text_to_image", rng, training=True)
            spec = replace(spec, text=spec.caption, drop="all" if rng.random() < T.DROP_P else None)
        else:
            spec = T.draw_mixture_spec(rng, self.mixture, anonymous=self.anonymous)
        return T.realize(spec, self.R, with_truth=with_truth)

    def fingerprint(self, n: int = 4) -> str:
        """A digest of the first `n` examples of step 0 as the model sees them (the arrays `batch` gives: target,
        tokens, context images, tokens and mask, task ids). Equal data give equal digests; a resumed run compares it
        with its checkpoint's, so a change of the kit's data (or of --seed, --names, --pool-size) since the run began
        does not pass unseen. A stage-2 mixture other than Table 1's (`--mixture`) is part of the digest."""
        h = hashlib.sha256()
        for k, v in sorted(self._batch_u8(0, range(min(n, self.batch_size))).items()):  # global indices: every host
            h.update(k.encode() + np.ascontiguousarray(v).tobytes())                    # gets the same digest
        if self.stage == 2 and not self.single and self.mixture != T.check_mixture(None):
            h.update(repr(sorted(self.mixture.items())).encode())  # other weights may leave the first examples alike
        return h.hexdigest()[:16]

    def _text(self, ex: T.Example) -> str | None:
        """The payload text the model sees: None = dropped (all pad)."""
        if ex.drop == "all":
            return None
        if self.variant == "no_instruction":
            return T.no_instruction_text(ex)
        return ex.instruction.text

    def encode(self, texts: list[str], length: int) -> np.ndarray:
        """int32 [len(texts), length] token ids, memoised per text (context texts repeat: "[ref#1] edge map")."""
        if len(self._ids) > 200_000:
            self._ids.clear()
        new = list(dict.fromkeys(t for t in texts if (t, length) not in self._ids))
        if new:
            for t, row in zip(new, self.tok.encode(new, length)):
                self._ids[t, length] = row
        if not texts:
            return np.zeros((0, length), np.int32)
        return np.stack([self._ids[t, length] for t in texts])

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's part of batch `step` (docs/contracts.md): image, text_ids, ctx_image, ctx_ids, ctx_mask,
        task_id. Same arrays as `instruction.batch_instructions` plus `image` and `task_id`."""
        return self._to_float(self._batch_u8(step))

    def _batch_u8(self, step: int, examples=None) -> dict[str, np.ndarray]:
        """`batch(step)` with its two images still uint8 (what a worker process sends); `examples`: the global
        indices to build (default: this host's slice)."""
        from .instruction import InstructionError, batch_instructions

        if examples is None:
            examples = range(self.offset, self.offset + self.local)
        exs = [self.example(step, j, with_truth=False) for j in examples]
        try:
            b = batch_instructions([e.instruction for e in exs], self.tok, self.R, self.K, self.text_len,
                                   self.ctx_text_len, texts=[self._text(e) for e in exs], uint8=True,
                                   encode=self.encode, check=False)
        except InstructionError as e:
            raise DataError(f"step {step}: {e}") from None
        if self.ref_drop:  # one reference masked out, as the per-reference guidance branch does
            for i, j in enumerate(examples):
                rng = np.random.default_rng([self.seed, int(step), int(j), 1])
                live = np.flatnonzero(b["ctx_mask"][i])
                if rng.random() < self.ref_drop and len(live):
                    k = live[rng.integers(len(live))]
                    b["ctx_mask"][i, k], b["ctx_image"][i, k] = False, 0
        return {**b, "image": np.stack([e.target for e in exs]),
                "task_id": np.asarray([e.task_id for e in exs], np.int32)}

    @staticmethod
    def _to_float(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 images -> float32 in [-1, 1] (unused context slots 0). The workers send uint8, a quarter of the
        bytes through their pipes, and the parent converts: the same float32 ops, so the same bytes."""
        ctx_image = b["ctx_image"].astype(np.float32) / 127.5 - 1.0  # the same float32 ops as instruction._resize
        ctx_image[~b["ctx_mask"]] = 0.0
        return dict(b, ctx_image=ctx_image, image=b["image"].astype(np.float32) / 127.5 - 1.0)

    # ------------------------------------------------------------------------------------------- iteration
    def __iter__(self):
        it = self._processes() if self.workers > 0 else self._thread()
        self._runs.add(it)
        return it

    def close(self):
        """Stop every running iterator of this loader (its thread or worker processes)."""
        for it in list(self._runs):
            try:
                it.close()
            except ValueError:  # running in another thread right now; it stops at its next step
                pass
        self._runs = weakref.WeakSet()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _end(self):
        return None if self.steps is None else self.start_step + int(self.steps)

    def _thread(self):
        q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()
        end = self._end()

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

    def __getstate__(self):
        """What a worker process receives: the loader without its live iterators; the tokenizer as its JSON; the
        stage-1 pool (items, embeddings, clusters) with only this resolution's cached images."""
        d = dict(self.__dict__, _runs=None, _ids={}, tok=(self.tok.tok.to_str(), self.tok.path))
        if self.pool is not None:
            d["pool"] = copy.copy(self.pool)
            d["pool"]._cache = {k: v for k, v in getattr(self.pool, "_cache", {}).items() if k[1] == self.R}
        return d

    def __setstate__(self, d):
        from tokenizers import Tokenizer as _Tok

        from .tokenizer import Tokenizer

        self.__dict__.update(d)
        self.tok = Tokenizer(_Tok.from_str(d["tok"][0]), d["tok"][1])
        self._runs = weakref.WeakSet()

    def _processes(self):
        n, end = self.workers, self._end()
        if end is not None and end <= self.start_step:
            return
        if end is not None:
            n = max(1, min(n, end - self.start_step))
        ctx = mp.get_context("spawn")
        depth = max(1, -(-self.prefetch // n))  # ceil(prefetch / n) batches queued per worker
        qs = [ctx.Queue(maxsize=depth) for _ in range(n)]
        procs = [ctx.Process(target=_worker, args=(self, w, n, qs[w]), daemon=True, name=f"iimagen-loader-{w}")
                 for w in range(n)]
        stopper = _Stopper(procs, qs)
        try:
            _start(procs)
            self.pids = [p.pid for p in procs]  # of the latest run; for tests and monitoring
            step = self.start_step
            while end is None or step < end:
                w = (step - self.start_step) % n
                kind, s, payload = _get(qs[w], procs[w])
                if kind == "error":
                    raise DataError(f"loader worker {w} failed building batch {s}:\n{payload}")
                assert s == step, (s, step)
                yield s, self._to_float(payload)
                step += 1
        finally:
            stopper()


class _Stopper:
    """Terminate and reap worker processes (idempotent)."""

    def __init__(self, procs, qs):
        self.procs, self.qs = procs, qs

    def __call__(self):
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            if p.pid is not None:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
                    p.join()
        for q in self.qs:
            q.cancel_join_thread()
            q.close()
        self.procs, self.qs = [], []


_START_LOCK = threading.Lock()


def _start(procs):
    """Start spawned workers without re-running the caller's `__main__` in them (spawn does by default: a training
    script would import jax in every worker, and a script without `if __name__ == "__main__":` would recurse). The
    workers need nothing from `__main__`: they run `_worker` on a pickled Loader."""
    main = sys.modules.get("__main__")
    with _START_LOCK:
        saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
        try:
            if saved:
                main.__dict__.pop("__file__", None)
                main.__spec__ = None
            for p in procs:
                p.start()
        finally:
            if saved:
                main.__dict__.update(saved)


def _get(q, proc, poll: float = 1.0):
    """Next item of a worker's queue; raise if the worker died without sending one."""
    while True:
        try:
            return q.get(timeout=poll)
        except queue.Empty:
            if not proc.is_alive():
                try:
                    return q.get(timeout=poll)
                except queue.Empty:
                    raise DataError(f"loader worker {proc.name} died (exit code {proc.exitcode}); see its error "
                                    f"above, or run with workers=0 to debug in this process") from None


def _worker(loader: Loader, w: int, n: int, q):
    """Process main: build batches start_step + w, + w + n, ... in order and queue them (blocking when full)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    parent = os.getppid()
    end = loader._end()
    step = loader.start_step + w
    try:
        while end is None or step < end:
            item = ("batch", step, loader._batch_u8(step))
            while True:
                try:
                    q.put(item, timeout=1.0)
                    break
                except queue.Full:
                    if os.getppid() != parent:  # orphaned: the parent is gone
                        return
            step += n
    except Exception:
        q.put(("error", step, traceback.format_exc()))
