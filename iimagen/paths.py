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
