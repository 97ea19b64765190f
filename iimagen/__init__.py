"""iimagen: Instruct-Imagen (Hu et al., CVPR 2024) in JAX/Flax.

The public names are imported lazily so that `import iimagen` stays fast and a notebook cell only pays for what it
uses. See docs/contracts.md for the arrays that cross module borders.
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Instruction": "iimagen.instruction",
    "Context": "iimagen.instruction",
    "InstructionError": "iimagen.instruction",
    "MAX_CONTEXTS": "iimagen.instruction",
    "batch_instructions": "iimagen.instruction",
    "load_tokenizer": "iimagen.tokenizer",
    "get_config": "iimagen.configs",
    "InstructImagen": "iimagen.model",
    "Generator": "iimagen.pipeline",
    "profile": "iimagen.profile",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'iimagen' has no attribute {name!r}")
