"""The kit's tokenizer: byte-level BPE with `[ref#1]`..`[ref#8]` as single special tokens (paper App. A.3.2).

The paper adds the reference markers as special tokens of T5's vocabulary, so the payload text and the context texts
share marker identity. The kit trains its own small tokenizer (the world's vocabulary is small) with the `tokenizers`
library on the instruction templates and the world's captions, lower-cased, byte-level (an unseen word or emoji
never fails: it falls back to bytes), pad id 0, and ships it as `data/tokenizer.json`. The model's embedding table
has `VOCAB_SIZE = 2048` rows; the trained vocabulary is at most that.

    >>> tok = load_tokenizer()
    >>> ids = tok.encode(["Follow [ref#1] edge map: a red circle"], max_len=16)   # int32 [1, 16], pad 0
    >>> tok.decode(ids[0])                                                    # lower-cased, markers kept
    'follow [ref#1] edge map: a red circle'

Rebuild (after the templates or the world's vocabulary change): `python -m iimagen.tokenizer`.
"""
from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

import numpy as np

from . import paths

VOCAB_SIZE = 2048
MAX_REFS = 8
PAD = "[PAD]"
REF_TOKENS = [f"[ref#{k}]" for k in range(1, MAX_REFS + 1)]
SPECIAL_TOKENS = [PAD] + REF_TOKENS  # ids 0..8, in this order
_SPACE_BEFORE_MARKER = re.compile(r"([^\s(\[\"'])(\[ref#[1-8]\])")


class TokenizerError(ValueError):
    """Bad tokenizer input or a missing/corrupt tokenizer file; the message names the fix."""


class Tokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer`: fixed-length int32 ids for the model; `.hf` for transformers."""

    def __init__(self, tok, path: Path | None = None):
        self.tok, self.path = tok, path
        self.pad_id = tok.token_to_id(PAD)
        self._ref_ids = [tok.token_to_id(t) for t in REF_TOKENS]
        if self.pad_id != 0 or None in self._ref_ids:
            raise TokenizerError(f"tokenizer {path}: needs {PAD} at id 0 and {REF_TOKENS[0]}..{REF_TOKENS[-1]} as "
                                 f"special tokens; rebuild it with `python -m iimagen.tokenizer`")
        if self.vocab_size > VOCAB_SIZE:
            raise TokenizerError(f"tokenizer {path}: {self.vocab_size} tokens > VOCAB_SIZE={VOCAB_SIZE} embedding rows")

    @property
    def vocab_size(self) -> int:
        """Number of tokens actually trained (<= VOCAB_SIZE, the model's embedding rows)."""
        return self.tok.get_vocab_size(with_added_tokens=True)

    def ref_id(self, k: int) -> int:
        """The id of the marker `[ref#k]`, k in 1..8."""
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_REFS:
            raise TokenizerError(f"ref_id({k!r}): k must be an int in 1..{MAX_REFS}")
        return self._ref_ids[k - 1]

    def encode(self, texts, max_len: int) -> np.ndarray:
        """int32 `[B, max_len]`: each text tokenized, truncated to `max_len`, padded with 0. A str gives B = 1."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(max_len, (int, np.integer)) or max_len < 1:
            raise TokenizerError(f"encode: max_len={max_len!r} must be an int >= 1")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TokenizerError(f"encode: texts[{i}] is a {type(t).__name__}; give strings")
        out = np.zeros((len(texts), max_len), np.int32)
        for i, e in enumerate(self.tok.encode_batch(texts, add_special_tokens=False)):
            ids = e.ids[:max_len]
            out[i, :len(ids)] = ids
        return out

    def tokens(self, text: str) -> list[str]:
        """The token strings of one text (byte-level: a leading 'Ġ' is a space)."""
        return self.tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids):
        """Text of one id sequence (pad dropped, markers kept); a 2-D array gives a list of texts."""
        ids = np.asarray(ids)
        if ids.ndim == 2:
            return [self.decode(row) for row in ids]
        if ids.ndim != 1:
            raise TokenizerError(f"decode: ids of shape {ids.shape}; give [L] or [B, L]")
        text = self.tok.decode([int(i) for i in ids if i != self.pad_id], skip_special_tokens=False)
        return _SPACE_BEFORE_MARKER.sub(r"\1 \2", text)  # markers absorb the space before them (lstrip)

    @cached_property
    def hf(self):
        """The same tokenizer as transformers' `PreTrainedTokenizerFast` (transformers 4.57 and 5.x)."""
        from transformers import PreTrainedTokenizerFast  # 5.x: an alias of TokenizersBackend

        return PreTrainedTokenizerFast(tokenizer_object=self.tok.__class__.from_str(self.tok.to_str()),
                                       pad_token=PAD, model_max_length=512)

    def __repr__(self):
        return f"Tokenizer(vocab_size={self.vocab_size}, path={str(self.path)!r})"


def load_tokenizer(path=None) -> Tokenizer:
    """Load `data/tokenizer.json` (or `path`: a tokenizer.json or a folder holding one, e.g. an exported model)."""
    from tokenizers import Tokenizer as _Tok

    path = Path(path or paths.TOKENIZER)
    if path.is_dir():
        path = path / "tokenizer.json"
    paths.require(path, "tokenizer", "Rebuild it with `python -m iimagen.tokenizer`.")
    try:
        tok = _Tok.from_file(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception on a corrupt file
        raise TokenizerError(f"{path} is not a tokenizers JSON file ({e}); rebuild it with "
                             f"`python -m iimagen.tokenizer`") from None
    return Tokenizer(tok, path)


# ----------------------------------------------------------------------------------------------------- training
_WORDS = """
circle square triangle diamond star hexagon heart cross ring crescent oval rectangle pentagon arrow moon cloud
red orange yellow green teal blue purple pink brown grey gray black white gold silver cyan magenta
small medium large tiny big huge little
top bottom left right centre center middle corner above below beside next near behind in front of on at under over
between and with the a an two three four several one its their is are sits lies floats stands
sky field grassy beach night desert snow wooden table background foreground scene picture image photo
stripes dots checker rings zigzag halves pattern patterned striped dotted eyes ears antenna feet
style styled mosaic halftone outline outlined sketch pencil watercolour watercolor oil painting pixel pixelated neon
pastel inverted posterized blur blurred noise noisy grain comic cartoon ink stamp cubist impressionist vintage sepia
subject toy robot creature character pet monster figure friend
edge edges depth mask map maps control contour silhouette layout content reference
"""


def _default_corpus() -> list[str]:
    """Captions from the world (`iimagen.world.caption_corpus()`) when it exists, else a built-in word list."""
    try:
        from .world import caption_corpus
    except (ImportError, AttributeError):
        caption_corpus = None
    if caption_corpus is not None:
        return list(caption_corpus())
    words = _WORDS.split()
    return words + [" ".join(words[i:i + 8]) for i in range(0, len(words), 4)]


def build_tokenizer(out=None, corpus=None, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE on every template (train + zero-shot) plus `corpus` (default: the world's captions),
    write it to `out` (default data/tokenizer.json) and return it loaded."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    from . import templates

    if vocab_size > VOCAB_SIZE:
        raise TokenizerError(f"vocab_size={vocab_size} > VOCAB_SIZE={VOCAB_SIZE}, the model's embedding rows")
    texts = [t for ts in (*templates.all_templates().values(), *templates.all_templates(True).values()) for t in ts]
    texts += list(templates.load()["prefixes"].values())
    texts += [f"{r} {k} image" for r in REF_TOKENS for k in ("edge", "depth", "mask", "sketch", "style", "content")]
    texts += list(_default_corpus() if corpus is None else corpus)
    texts = [t.replace("{caption}", "").replace("{ref1}", "").replace("{ref2}", "") for t in texts]
    texts += [" " + t for t in texts]  # words after a space (mid-sentence) as well as at the start

    tok = _Tok(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # A marker absorbs the space before it (lstrip), so "of [ref#1] a dog" is "of", "[ref#1]", "Ġa", "Ġdog".
    special = [AddedToken(t, special=True, normalized=False, lstrip=t != PAD) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    out = Path(out or paths.TOKENIZER)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out), pretty=True)
    return load_tokenizer(out)


if __name__ == "__main__":
    t = build_tokenizer()
    example = "Edge-to-image generation. Let [ref#1] edge map guide you: a large teal hexagon in the snow"
    print(f"wrote {t.path}: vocab size {t.vocab_size} (<= VOCAB_SIZE={VOCAB_SIZE})")
    print(example)
    print(json.dumps(t.tokens(example)))
    print(t.encode(example, 24)[0].tolist())
