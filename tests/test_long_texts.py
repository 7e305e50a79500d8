"""A long text that the model truncates is tokenized only as far as needed (`tokenizer.leading_words`): the kept
tokens are the whole text's, for WordPiece (BERT), byte-level BPE (RoBERTa, GPT-2) and Unigram with Metaspace
(T5, XLM-RoBERTa) tokenizers, whatever whitespace, punctuation or scripts the text holds, for one text and for a
pair (a cross-encoder's, cut "longest_first"); and a line of half a megabyte embeds as sentence-transformers embeds
it, and long pairs score as its CrossEncoder scores them."""

import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import cosine, st_reference
from test_cli import COMMAND, ENV
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from embedder import EmbeddingEngine, tokenizer
from embedder.tokenizer import LEADING_CHARS_PER_TOKEN, leading_words, long_pair, trailing_words

GOLDEN = Path(__file__).parent / "golden" / "minilm_texts.json"
TEXTS = json.loads(GOLDEN.read_text(encoding="utf-8"))
MAX_LENGTH = 32


def trained(kind: str) -> Tokenizer:
    """A small tokenizer of `kind` trained on the golden texts."""
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=400, unk_token="<unk>", special_tokens=["<unk>"])
    tok.train_from_iterator(TEXTS, trainer)
    return tok


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "unigram"])
def tokenizers(request, minilm_path) -> tuple[Tokenizer, Tokenizer]:
    """One kind's truncating tokenizer, and the same untruncated."""
    tok = Tokenizer.from_file(str(minilm_path / "tokenizer.json")) if request.param == "wordpiece" else trained(
        request.param)
    tok.no_padding()
    whole = Tokenizer.from_str(tok.to_str())
    whole.no_truncation()
    tok.enable_truncation(MAX_LENGTH)
    return tok, whole


def long_texts(seed: int) -> list[str]:
    """Texts of golden words far past the cut, joined by runs of spaces, newlines, tabs and control characters."""
    rng = random.Random(seed)
    words = " ".join(TEXTS).split()
    gaps = [" ", "  ", "\n", " \n ", "\t", "\u3000", " \x1c", "\x1c ", "\u00a0", " , ", "-"]
    chars = 4 * 4 ** 3 * LEADING_CHARS_PER_TOKEN * MAX_LENGTH  # past three tries
    texts = []
    for _ in range(6):
        pieces, size = [], 0
        while size < chars:
            pieces.append(rng.choice(words) + rng.choice(gaps))
            size += len(pieces[-1])
        texts.append("".join(pieces))
    texts.append("x" * chars)  # one word: no cut anywhere, tokenized whole
    texts.append(" " * chars + "last")
    return texts


@pytest.mark.parametrize("seed", [0, 1])
def test_the_kept_tokens_are_the_whole_texts(tokenizers, seed: int) -> None:
    tokenizer, _ = tokenizers
    texts = long_texts(seed)
    cut = [leading_words(t, tokenizer, MAX_LENGTH) for t in texts]
    assert all(len(c) < len(t) for c, t in zip(cut[:6], texts))  # words with gaps: cut
    assert cut[6] == texts[6]
    for short, text in zip(cut, texts):
        assert tokenizer.encode(short).ids == tokenizer.encode(text).ids
        assert tokenizer.encode(short, add_special_tokens=False).ids == tokenizer.encode(
            text, add_special_tokens=False).ids


@pytest.mark.parametrize("keep", [1, 5, MAX_LENGTH])
def test_the_last_tokens_kept_are_the_whole_texts(tokenizers, keep: int) -> None:
    """vLLM's truncate_prompt_tokens and TEI's truncation_direction "Left": a text's last tokens, from its end."""
    _, whole = tokenizers
    texts = long_texts(5)
    ends = [trailing_words(text, lambda t: len(whole.encode(t).ids), keep + MAX_LENGTH) for text in texts]
    assert all(len(end) < len(text) for end, text in zip(ends[:6], texts))
    for end, text in zip(ends, texts):
        assert whole.encode(end).ids[-keep:] == whole.encode(text).ids[-keep:]


def test_a_short_text_is_left_whole(tokenizers) -> None:
    text = " ".join(TEXTS)[: 4 * LEADING_CHARS_PER_TOKEN * MAX_LENGTH - 1]
    assert leading_words(text, tokenizers[0], MAX_LENGTH) is text


def test_a_pair_with_long_texts_is_cut_as_the_whole_pair(tokenizers, monkeypatch) -> None:
    """Long with long (the same text too: equal lengths, the second keeps the odd token), long with short, short
    with long; token ids and types. The long texts' tokens are counted in many pieces, as the whole counts them."""
    tok, whole = tokenizers
    monkeypatch.setattr(tokenizer, "COUNTED_CHARS", 700)
    texts = [text[: 2100 + 300 * k] for k, text in enumerate(long_texts(2)[:4])]
    for text in texts:
        assert tokenizer._token_count(text, whole) == len(whole.encode(text, add_special_tokens=False).ids)
    for first in [*texts[:2], "a short query"]:
        for second in [*texts[2:], "short doc", first]:
            want, got = tok.encode(first, second), long_pair(first, second, tok, whole, MAX_LENGTH)
            assert (got.ids, got.type_ids) == (want.ids, want.type_ids)


def test_a_line_of_half_a_megabyte_embeds_as_sentence_transformers_embeds_it(minilm_path: Path, tmp_path: Path) -> None:
    words = " ".join(TEXTS).split()
    huge = " ".join(words[k % len(words)] for k in range(90_000))  # ~0.55 MB, one line
    source = tmp_path / "in.txt"
    source.write_text(f"{huge}\nshort line\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    run = subprocess.run([*COMMAND, str(source), "-o", str(out), "--model", str(minilm_path)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    table = pq.read_table(out)
    want, tokens = st_reference(minilm_path, [huge, "short line"])
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert cosine(got, want).min() >= 0.9999
    assert table.column("tokens").to_pylist() == tokens
    engine = EmbeddingEngine(str(minilm_path))
    whole = engine.model.tokenizer.encode_whole([huge])[0]
    assert engine.tokenize([huge], keep_last=200) == [whole[-200:]]  # the last 200, as vLLM keeps them
    engine.unload()


def test_long_pairs_score_as_cross_encoder_predict(minilm_path: Path, tmp_path: Path) -> None:
    from test_rerank import cross_encoder_scores
    from tiny_models import tiny_cross_encoder

    path = tiny_cross_encoder("bert", minilm_path, tmp_path, saved_by="st")  # 128 tokens
    long = [text[: 9000 + 2000 * k] for k, text in enumerate(long_texts(4)[:2])]  # past 4 x 16 x 128 characters
    pairs = [(long[0], long[1]), (long[1], long[0]), (long[0], long[0]), ("a query", long[1]), (long[0], "a doc")]
    engine = EmbeddingEngine(str(path))
    got = engine.score(pairs)
    engine.unload()
    np.testing.assert_allclose(got, cross_encoder_scores(path, pairs), atol=1e-5, rtol=0)


def test_a_long_text_refused_is_counted_not_tokenized_whole(minilm_path: Path, tmp_path: Path, monkeypatch) -> None:
    """`--long-input error`, a server's `truncate: false`: the refusal names the first input over the limit and its
    exact token count, a long text's counted a piece at a time; a long text within the limit (one huge word) is
    still embedded; pairs the same."""
    from test_rerank import PAIRS
    from tiny_models import tiny_cross_encoder

    from embedder.errors import InputTooLong

    monkeypatch.setattr(tokenizer, "COUNTED_CHARS", 5000)  # many pieces
    words = " ".join(TEXTS).split()
    long, over = " ".join(words[k % len(words)] for k in range(9000)), "word " * 300  # over: short, 302 tokens
    whole = EmbeddingEngine(str(minilm_path), long_input="chunk")  # keeps every token: the whole counts
    count = len(whole.tokenize([long])[0])
    whole.unload()
    engine = EmbeddingEngine(str(minilm_path), long_input="error")
    giant_word = "x" * 70_000  # long in characters, one [UNK] token
    assert [len(row) for row in engine.tokenize([giant_word, "short"])] == [3, 3]
    for texts, named, tokens in (([long, "short"], 0, count), (["short", long, over], 1, count),
                                 ([over, long], 0, 302)):
        with pytest.raises(InputTooLong, match=f"input {named} has {tokens} tokens") as refused:
            engine.tokenize(texts)
        assert refused.value.index == named
    assert engine.model.tokenizer.whole_lengths([long, "short", giant_word]) == [count, 3, 3]
    engine.unload()

    reranker = EmbeddingEngine(str(tiny_cross_encoder("bert", minilm_path, tmp_path, saved_by="st")),
                               long_input="error")
    pairs = reranker.model.tokenizer
    query, document = PAIRS[0]
    bare = [count - 2, *(len(pairs.encode_whole([text])[0]) - 2 for text in (query, document))]
    assert pairs.pair_whole_lengths([query, long, query], [long, document, document]) == [
        bare[1] + bare[0] + 3, bare[0] + bare[2] + 3, bare[1] + bare[2] + 3]
    with pytest.raises(InputTooLong, match=f"input 1 has {bare[0] + bare[2] + 3} tokens"):
        reranker.score([(query, document), (long, document)])
    reranker.unload()
