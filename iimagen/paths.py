"""Where the kit's data lives: `data/` beside the package (a clone or an editable install), or `$IIMAGEN_DATA`."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IIMAGEN_DATA", REPO / "data"))
TEMPLATES = DATA / "templates"
TOKENIZER = DATA / "tokenizer.json"
EXAMPLES = DATA / "examples"
CHECKPOINTS = DATA / "checkpoints"


def require(path: Path, what: str, fix: str) -> Path:
    """`path` if it exists, else a FileNotFoundError naming what is missing and how to get it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} not found at {path}. {fix}")
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------------
# Writing outputs: checked before the work, never over a user's file unless asked, atomically
# ---------------------------------------------------------------------------------------------------------------------
class OutputError(ValueError):
    """An output path that cannot be written as asked; the message names the option and the fix."""


def check_output(folder, names=(), force: bool = False, option: str = "--out") -> Path:
    """Check, before any work, that `folder` can hold the files `names`: it is (or can be made) a writable folder, and
    none of the files exists unless `force`. Nothing is created: a nearest existing parent is probed instead."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option} {folder}: {probe} is a file, not a folder; give a folder path")
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise OutputError(f"{option} {folder}: cannot write in {probe} ({e.strerror}); give a folder you can write "
                          "to") from None
    if not force:
        taken = [n for n in names if (folder / n).exists()]
        if taken:
            raise OutputError(f"{option} {folder} already holds {taken[0]}" + (f" and {len(taken) - 1} more of the "
                              f"files to write" if len(taken) > 1 else "") + "; pass --force to overwrite them, or "
                              "choose another folder")
    return folder


def atomic_write(path, write) -> Path:
    """Call `write(tmp)` on a temporary name beside `path` (same suffix, so savers that read it still work), then
    rename it to `path`: a reader never sees half a file, and a failure leaves the old file (if any) whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
