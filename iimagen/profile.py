"""Run profiles: how big and how long notebooks and demos run on this machine.

`IIMAGEN_PROFILE=ci|cpu|tpu` chooses; unset, an accelerator (TPU or GPU) means `tpu`, otherwise `cpu`.
- `ci`: the 2-core CI machine; every notebook in about a minute.
- `cpu`: a laptop; a few minutes per notebook.
- `tpu`: Colab v5e-1 or any accelerator; the full small-scale reproduction.
"""
from __future__ import annotations

import os

PROFILES = ("ci", "cpu", "tpu")


def profile() -> str:
    """The active profile name."""
    name = os.environ.get("IIMAGEN_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(f"IIMAGEN_PROFILE={name!r} is not a profile; use one of {', '.join(PROFILES)}")
        return name
    import jax

    return "tpu" if jax.default_backend() in ("tpu", "gpu") else "cpu"


def pick(ci, cpu, tpu):
    """The value for the active profile: `steps = pick(ci=2, cpu=200, tpu=5000)`."""
    return {"ci": ci, "cpu": cpu, "tpu": tpu}[profile()]
