"""The tokenizer: [ref#k] markers as single special ids, pad 0, lower-casing, robust to unseen text (App. A.3.2)."""
import unicodedata

import numpy as np
import pytest

from iimagen import templates as T
from iimagen.tokenizer import VOCAB_SIZE, TokenizerError, build_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_shipped_tokenizer_fits_the_embedding(tok):
    assert VOCAB_SIZE == 2048 and 300 < tok.vocab_size <= VOCAB_SIZE
    assert tok.pad_id == 0 and tok.tok.id_to_token(0) == "[PAD]"


@pytest.mark.parametrize("k", range(1, 9))
def test_markers_are_single_ids(tok, k):
    rid = tok.ref_id(k)
    assert tok.tok.id_to_token(rid) == f"[ref#{k}]"
    for text in (f"[ref#{k}]", f"of [ref#{k}] a dog", f"[ref#{k}]'s hat", f"([ref#{k}])", f"x[ref#{k}]y"):
        ids = tok.encode(text, 16)[0]
        assert (ids == rid).sum() == 1, text
        assert not np.isin(ids, [tok.ref_id(j) for j in range(1, 9) if j != k]).any()


def test_ref_id_errors(tok):
    for bad in (0, 9, "1", 1.0):
        with pytest.raises(TokenizerError, match="1..8"):
            tok.ref_id(bad)


def test_encode_shapes_padding_truncation(tok):
    ids = tok.encode(["a red circle", "", "a " * 100], 12)
    assert ids.shape == (3, 12) and ids.dtype == np.int32
    n = (ids[0] != 0).sum()
    assert 0 < n < 12 and (ids[0, n:] == 0).all() and (ids[1] == 0).all() and (ids[2] != 0).all()
    assert tok.encode("a red circle", 12).shape == (1, 12)
    with pytest.raises(TokenizerError, match="max_len"):
        tok.encode("x", 0)
    with pytest.raises(TokenizerError, match="give strings"):
        tok.encode([None], 4)


def test_lowercase_and_decode_round_trip(tok):
    text = "Recreate the content of [ref#2] content image using the style of [ref#1] Symbolism."
    ids = tok.encode(text, 64)
    assert (ids == tok.encode(text.lower(), 64)).all()
    assert tok.decode(ids[0]) == text.lower()
    assert tok.decode(ids) == [text.lower()]


@pytest.mark.parametrize("text", ["zorblaxian quuxberry", "ünïcödé façade", "emoji 🦄🔥 ok", "日本語テキスト",
                                  "tab\tand\nnewline", "\x00\x01 control", "{caption} braces", " " * 5])
def test_unseen_text_never_crashes(tok, text):
    ids = tok.encode(text, 64)[0]
    assert ids.dtype == np.int32 and (ids < tok.vocab_size).all() and (ids >= 0).all()
    assert (ids != 0).sum() < 64                           # not truncated, so decoding gives the text back
    assert tok.decode(ids) == unicodedata.normalize("NFKC", text).lower()


def test_template_words_are_whole_tokens(tok):
    # trained on the templates: common template words are one token each
    for w in ("generate", "image", "style", "caption", "following", "content"):
        assert len(tok.tokens(" " + w)) == 1, w


def test_hf_wrapper_agrees(tok):
    hf = tok.hf
    assert hf.pad_token_id == 0
    texts = ["Follow [ref#1] edge map: a red circle", "[ref#2]'s style"]
    enc = hf(texts, padding="max_length", truncation=True, max_length=16)
    assert (np.array(enc["input_ids"]) == tok.encode(texts, 16)).all()
    assert hf.convert_ids_to_tokens(tok.ref_id(3)) == "[ref#3]"


def test_build_tokenizer(tmp_path):
    corpus = ["a zorblax sits beside a quuxberry"] * 3
    t = build_tokenizer(tmp_path / "tok.json", corpus=corpus, vocab_size=1024)
    assert t.vocab_size <= 1024 and [t.ref_id(k) for k in range(1, 9)] == list(range(1, 9))
    assert len(t.tokens(" zorblax")) == 1                  # the corpus vocabulary became whole tokens
    build_tokenizer(tmp_path / "tok2.json", corpus=corpus, vocab_size=1024)
    assert (tmp_path / "tok.json").read_text() == (tmp_path / "tok2.json").read_text()   # deterministic
    with pytest.raises(TokenizerError, match="VOCAB_SIZE"):
        build_tokenizer(tmp_path / "x.json", corpus=corpus, vocab_size=4096)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m iimagen.tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TokenizerError, match="rebuild"):
        load_tokenizer(tmp_path / "bad.json")
    assert load_tokenizer(T.paths.DATA).vocab_size > 0        # a folder holding tokenizer.json


def test_shipped_tokenizer_knows_the_world_vocabulary(tok):
    world = pytest.importorskip("iimagen.world")
    if not hasattr(world, "caption_corpus"):
        pytest.skip("iimagen.world.caption_corpus() not there yet")
    corpus = world.caption_corpus()
    n_tok = sum(len(tok.tokens(c)) for c in corpus)
    n_words = sum(len(c.split()) for c in corpus)
    assert n_tok <= 1.1 * n_words, "data/tokenizer.json is stale: rebuild it with `python -m iimagen.tokenizer`"
