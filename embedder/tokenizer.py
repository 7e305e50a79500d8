"""Text to token ids exactly as sentence-transformers tokenizes: special tokens, truncation, lower-casing."""

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, InputTooLong, ModelError, lone_surrogate

SHORT_TEXT_CHARS = 4096  # a text encoded inline (one text, GIL held) rather than by encode_batch
LEADING_CHARS_PER_TOKEN = 16  # a long text cut to be truncated is first tried at this many characters a kept token
COUNTED_CHARS = 1 << 16  # a long text's tokens are counted this many characters at a time
_PAD_TOKENS = ("[PAD]", "<pad>", "<|endoftext|>", "<|pad|>")


@dataclass(frozen=True)
class Pairs:
    """Tokenized text pairs: ids with special tokens, and where each pair's second text starts (the first token
    of token type 1, or the row's length where the tokenizer gives every token type 0, as RoBERTa's does)."""

    ids: list[list[int]]
    splits: list[int]


def second_text_start(type_ids: Sequence[int]) -> int:
    return next((i for i, t in enumerate(type_ids) if t), len(type_ids))


@dataclass(frozen=True)
class Tokens:
    """One text's whole tokenization, as the servers' /tokenize shows it: the ids, each token's span of characters
    in the text (None for a special token, or where the tokenizer keeps no offsets) and which are special."""

    ids: list[int]
    strings: list[str]  # the vocabulary's string for each token ("##ing", "[CLS]")
    spans: list[tuple[int, int] | None]
    special: list[bool]


@dataclass(frozen=True)
class TextTokenizer:
    encode_batch: Callable[[list[str]], list[list[int]]]
    encode_whole: Callable[[list[str]], list[list[int]]]  # never truncated, whatever `long_input` says
    # (first texts, second texts, never cut?) -> each pair's ids and where its second text starts (`Pairs`)
    encode_pair_batch: Callable[[list[str], list[str], bool], "Pairs"]
    # (texts, with special tokens?) -> each text's whole `Tokens`; (ids, skip special tokens?) -> the text
    tokens: Callable[[list[str], bool], list[Tokens]]
    decode: Callable[[list[int], bool], str]
    pad_token_id: int
    vocab_size: int
    max_length: int
    do_lower_case: bool = False
    long_input: str = "truncate"  # `long_inputs.LONG_INPUT_MODES`: cut at max_length, refuse, or keep whole
    token_id: Callable[[str], int | None] = lambda token: None  # a vocabulary token's id; None if it has none
    # a long text's tokens, special ones left out, counted a piece at a time; None for one that is not long (or
    # where the tokenizer cannot count so): the whole tokenization of a 25 MB text took 3.2 GB
    count_long: Callable[[str], int | None] = lambda text: None
    specials: Callable[[bool], int] = lambda pair: 0  # special tokens framing a text (True: a pair)

    def encode(self, texts: Sequence[str], prompt: str | None = None, keep_last: int | None = None) -> list[list[int]]:
        """Token ids with special tokens, long ones as `long_input` says; `keep_last` keeps each text's last N
        tokens of its whole tokenization instead (vLLM's truncate_prompt_tokens)."""
        texts = self._prompted(texts, prompt)
        if keep_last is not None:
            def count(text: str) -> int:
                return len(self.encode_whole([text])[0])

            ends = [trailing_words(text, count, keep_last + self.max_length) for text in texts]
            return [row[-keep_last:] for row in self.encode_whole(ends)]
        if self.long_input != "error":
            return self.encode_batch(texts)
        # refused long texts are counted, not tokenized whole; the first text over the limit is named
        counts = [self._long_length(text) for text in texts]
        kept = iter(self.encode_batch([text for text, n in zip(texts, counts) if n is None]))
        rows = [next(kept) if n is None else None for n in counts]
        self.refuse_long([len(row) if row is not None else n for row, n in zip(rows, counts)])
        return rows

    def whole_lengths(self, texts: Sequence[str], prompt: str | None = None) -> list[int]:
        """Each text's tokens before any cut, as `encode` counts them: what a request refusing long inputs checks
        on a server that cuts them."""
        texts = self._prompted(texts, prompt)
        counts = [self._long_length(text) for text in texts]
        rest = iter(self.encode_whole([text for text, n in zip(texts, counts) if n is None]))
        return [len(next(rest)) if n is None else n for n in counts]

    def _long_length(self, text: str) -> int | None:
        """A long text's tokens with its special tokens, counted a piece at a time, where it is over max_length
        (so refused, or checked, without its tokens); None for the others."""
        count = self.count_long(text)
        length = None if count is None else count + self.specials(False)
        return length if length is not None and length > self.max_length else None

    def whole_tokens(self, texts: Sequence[str], special_tokens: bool = True,
                     prompt: str | None = None) -> list[Tokens]:
        """Each text's tokenization (`prompt` first), never cut, with its tokens' strings and spans (the servers'
        /tokenize)."""
        return self.tokens(self._prompted(texts, prompt), special_tokens)

    def text_of(self, ids: Sequence[int], skip_special_tokens: bool = True, param: str = "ids") -> str:
        """Token ids back to text (/detokenize, /decode); an id outside the vocabulary is refused, naming `param`."""
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InputError(f"'{param}' holds token id {bad}, outside this model's vocabulary of {self.vocab_size}",
                             param)
        return self.decode(list(ids), skip_special_tokens)

    def _prompted(self, texts: Sequence[str], prompt: str | None) -> list[str]:
        """The texts checked as the caller gave them (an error names a character of their own), then prompted."""
        if prompt and (at := lone_surrogate(prompt)) is not None:
            raise InputError(f"the prompt holds a lone UTF-16 surrogate at character {at}, which is not text", "prompt")
        texts = self.checked(texts)
        if not prompt:
            return texts
        prompt = prompt.lower() if self.do_lower_case else prompt
        return [prompt + t for t in texts]

    def encode_pairs(self, firsts: Sequence[str], seconds: Sequence[str]) -> "Pairs":
        """Each (first, second) pair as one input, as transformers tokenizes a pair for a cross-encoder: both texts
        framed by special tokens, a long pair cut from its longer text first ("longest_first") or refused."""
        firsts, seconds = self.checked(firsts), self.checked(seconds)
        if self.long_input == "error":
            self.refuse_long(self.pair_whole_lengths(firsts, seconds))
        return self.encode_pair_batch(firsts, seconds, False)

    def pair_whole_lengths(self, firsts: Sequence[str], seconds: Sequence[str]) -> list[int]:
        """Each pair's tokens before any cut: what a rerank refusing long pairs checks (TEI's `truncate: false`);
        a pair holding a long text counted a piece at a time."""
        firsts, seconds = self.checked(firsts), self.checked(seconds)
        counts = [(self.count_long(a), self.count_long(b)) for a, b in zip(firsts, seconds)]
        short = [pair == (None, None) for pair in counts]
        rest = iter(self.encode_pair_batch([a for a, keep in zip(firsts, short) if keep],
                                           [b for b, keep in zip(seconds, short) if keep], True).ids)
        return [len(next(rest)) if keep else
                self._bare_length(a, n_a) + self._bare_length(b, n_b) + self.specials(True)
                for a, b, (n_a, n_b), keep in zip(firsts, seconds, counts, short)]

    def _bare_length(self, text: str, count: int | None) -> int:
        """A text's tokens, special ones left out: its `count_long`, or its whole tokenization's."""
        return count if count is not None else len(self.encode_whole([text])[0]) - self.specials(False)

    def checked(self, texts: Sequence[str]) -> list[str]:
        """The texts as the tokenizer takes them; one that is not a string, or holds a lone surrogate, is refused,
        naming it."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"input {i} is {type(text).__name__}, not a string", index=i)
            if (at := lone_surrogate(text)) is not None:
                raise InputError(f"input {i} holds a lone UTF-16 surrogate at character {at}, which is not text",
                                 index=i)
        return [t.lower() for t in texts] if self.do_lower_case else list(texts)

    def refuse_long(self, lengths: Sequence[int], advice: str = "", param: str = "input",
                    limit: int | None = None) -> None:
        """Refuse the first input over max_length (or `limit`), naming it; `advice` ends the message."""
        limit = limit or self.max_length
        for i, n in enumerate(lengths):
            if n > limit:
                raise InputTooLong(f"input {i} has {n} tokens, more than the model's maximum of {limit}{advice}",
                                   param, index=i)

    def special_tokens(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The special tokens encode() puts before and after every text ([CLS] and [SEP], <s> and </s>...)."""
        bare, one = self.encode_batch(["", "a"])
        common = next((i for i, (x, y) in enumerate(zip(bare, one)) if x != y), min(len(bare), len(one)))
        return tuple(bare[:common]), tuple(bare[common:])


def is_long(text: str, tokens: int) -> bool:
    """Whether `text` is long enough for `leading_words` (or `trailing_words`) to cut, for `tokens` kept."""
    return len(text) >= 4 * LEADING_CHARS_PER_TOKEN * tokens


def leading_words(text: str, tokenizer, max_length: int) -> str:
    """The start of a long `text` that a truncating Rust `tokenizer` cuts to the same tokens as the whole text: whole
    words, and more than a window of tokens past what it keeps, so that the cut is far from them; `text` itself
    where no such start is under a quarter of it. Tokenizing a 25 MB line whole to keep its first 256 tokens
    took 33 s and 3.2 GB; a server's 32 MB body could hold one such text."""
    size = LEADING_CHARS_PER_TOKEN * max_length
    while 4 * size <= len(text):
        end = _word_break(text, 0, size)
        if end > 0 and len(tokenizer.encode(text[:end], add_special_tokens=True).overflowing) > 1:
            return text[:end]
        size *= 4
    return text


def trailing_words(text: str, count: Callable[[str], int], tokens: int) -> str:
    """The end of a long `text`, from a space that starts a word, that `count` finds at least `tokens` tokens in
    (special tokens included): its last ones, all but a margin, are the whole text's (`leading_words`, from the
    other end); `text` itself where no such end is under a quarter of it."""
    size = LEADING_CHARS_PER_TOKEN * tokens
    while 4 * size <= len(text):
        start = _first_word_break(text, len(text) - size)
        if start > 0 and count(text[start:]) >= tokens:
            return text[start:]
        size *= 4
    return text


def long_pair(first: str, second: str, tokenizer, whole_tokenizer, max_length: int):
    """`tokenizer.encode(first, second)` for a pair holding a long text, without tokenizing it whole at once: a
    pair's truncation makes an overflow of each window of one text with each window of the other (two texts of
    8,000 words: 4,031 overflows, 0.9 GB; of 117 and 86 KB: 24 s, 7.4 GB). Each text's leading tokens, as
    many as the cut can keep, stand for it at a length the cut treats alike: its own up to `max_length` + 2, else
    one past that, one more for the longer text (which keeps the odd token): where both texts are that long, a cut
    one's tokens are counted, a piece at a time."""
    texts = (first, second)
    cut = [leading_words(text, tokenizer, max_length) for text in texts]
    # the second as a pair's second, of token type 1 where no post-processor sets the types
    heads = [whole_tokenizer.encode(cut[0], add_special_tokens=False),
             whole_tokenizer.encode("", cut[1], add_special_tokens=False)]
    counts = [len(head.ids) for head in heads]  # exact where not cut; else past max_length + 2
    if min(counts) > max_length + 2:  # which is longer decides which keeps the odd token: count the cut exactly
        counts = [_token_count(text, whole_tokenizer) if part is not text else count
                  for text, part, count in zip(texts, cut, counts)]
    for head, count, other in zip(heads, counts, reversed(counts)):
        head.truncate(count if count <= max_length + 2 else max_length + 3 + (count > other))
    return tokenizer.post_process(heads[0], heads[1], add_special_tokens=True)


def _token_count(text: str, whole_tokenizer) -> int:
    """`text`'s tokens, without special tokens, counted about `COUNTED_CHARS` at a time, in pieces cut at
    `_word_break`s."""
    count, start = 0, 0
    while start < len(text):
        end, reach = -1, COUNTED_CHARS
        while end < 0:
            end = len(text) if start + reach >= len(text) else _word_break(text, start, start + reach)
            reach *= 2
        count += len(whole_tokenizer.encode(text[start:end], add_special_tokens=False).ids)
        start = end
    return count


def _first_word_break(text: str, start: int) -> int:
    """The first `_word_break` from `start` on, or -1."""
    i = text.find(" ", max(start, 1))
    while i > 0 and text[i - 1].isspace():
        i = text.find(" ", i + 1)
    return i


def _word_break(text: str, start: int, stop: int) -> int:
    """The last i in (start, stop) where a space follows a character that is not white space, or -1: every
    tokenizer's pre-tokenizer splits there alike whether the text goes on or not (BERT's at white space, byte-level
    BPE's before a space that starts a word, Metaspace's before each space)."""
    i = text.rfind(" ", start + 1, stop)
    while i > start and text[i - 1].isspace():
        i = text.rfind(" ", start + 1, i - 1)
    return i


def load_tokenizer(model_dir: Path, max_length: int, do_lower_case: bool, long_input: str,
                   whole_tokens: Sequence[str] = ()) -> TextTokenizer:
    """The Rust tokenizer from tokenizer.json; transformers only for models that ship none. `whole_tokens`:
    vocabulary tokens the text may hold that must stay one token (a ColBERT marker such as [unused0]), made special
    tokens as sentence-transformers does where the tokenizer would split them."""
    truncate = long_input == "truncate"
    path = model_dir / "tokenizer.json"
    if path.exists():
        from tokenizers import AddedToken, Tokenizer

        def opened() -> Tokenizer:
            tok = Tokenizer.from_file(str(path))
            split = [t for t in whole_tokens
                     if tok.token_to_id(t) is not None and len(tok.encode(t, add_special_tokens=False).ids) != 1]
            tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in split])
            return tok

        tok = opened()
        tok.no_padding()
        if truncate:
            tok.enable_truncation(max_length)
        else:
            tok.no_truncation()
        pad = (tok.padding or {}).get("pad_id")
        if pad is None:
            pad = next((i for t in _PAD_TOKENS if (i := tok.token_to_id(t)) is not None), 0)

        @functools.cache
        def untruncated() -> Tokenizer:
            """A second copy, made on first use (a large vocabulary costs memory), only where `tok` truncates."""
            if not truncate:
                return tok
            whole = opened()
            whole.no_padding()
            whole.no_truncation()
            return whole

        def leading(texts: list[str]) -> list[str]:
            return [leading_words(t, tok, max_length) for t in texts] if truncate else texts

        def encode_batch(texts: list[str]) -> list[list[int]]:
            # encode_batch hands even one text to its thread pool (0.2 ms a request, measured), but encode holds the
            # GIL: a long text there froze a server's event loop (13 s for 33 MB), so only short ones take it.
            texts = leading(texts)
            if len(texts) == 1 and len(texts[0]) <= SHORT_TEXT_CHARS:
                return [tok.encode(texts[0], add_special_tokens=True).ids]
            return [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]

        def encode_whole(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in untruncated().encode_batch(texts, add_special_tokens=True)]

        def encode_pair_batch(firsts: list[str], seconds: list[str], whole: bool) -> Pairs:
            pairs = list(zip(firsts, seconds))
            long = [truncate and not whole and (is_long(a, max_length) or is_long(b, max_length)) for a, b in pairs]
            short = iter((untruncated() if whole else tok).encode_batch(
                [pair for pair, cut in zip(pairs, long) if not cut], add_special_tokens=True))
            found = [long_pair(*pair, tok, untruncated(), max_length) if cut else next(short)
                     for pair, cut in zip(pairs, long)]
            return Pairs([e.ids for e in found], [second_text_start(e.type_ids) for e in found])

        def tokens(texts: list[str], special_tokens: bool) -> list[Tokens]:
            found = untruncated().encode_batch(texts, add_special_tokens=special_tokens)
            return [Tokens(e.ids, e.tokens, [None if m else span for span, m in zip(e.offsets, e.special_tokens_mask)],
                           [bool(m) for m in e.special_tokens_mask]) for e in found]

        def decode(ids: list[int], skip_special_tokens: bool) -> str:
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

        def count_long(text: str) -> int | None:
            return _token_count(text, untruncated()) if is_long(text, max_length) else None

        return TextTokenizer(encode_batch, encode_whole, encode_pair_batch, tokens, decode, pad, tok.get_vocab_size(),
                             max_length, do_lower_case, long_input, tok.token_to_id, count_long,
                             tok.num_special_tokens_to_add)

    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ModelError(f"{model_dir} has no tokenizer.json; its tokenizer files need transformers to read "
                         "(pip install transformers)") from e
    try:
        hf = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # transformers raises many types for a missing or broken tokenizer
        raise ModelError(f"cannot load a tokenizer from {model_dir}: {e}") from e
    vocab = hf.get_vocab()
    split = [t for t in whole_tokens if t in vocab and hf.tokenize(t) != [t]]
    if split:
        from tokenizers import AddedToken

        hf.add_tokens([AddedToken(t, normalized=False, special=True) for t in split], special_tokens=True)

    def hf_encode_batch(texts: list[str]) -> list[list[int]]:
        return hf(texts, truncation=truncate, max_length=max_length if truncate else None)["input_ids"]

    def hf_encode_whole(texts: list[str]) -> list[list[int]]:
        return hf(texts, truncation=False)["input_ids"]

    def hf_encode_pair_batch(firsts: list[str], seconds: list[str], whole: bool) -> Pairs:
        cut = truncate and not whole
        found = hf(firsts, seconds, truncation="longest_first" if cut else False,
                   max_length=max_length if cut else None, return_token_type_ids=True)
        return Pairs(found["input_ids"], [second_text_start(types) for types in found["token_type_ids"]])

    def hf_tokens(texts: list[str], special_tokens: bool) -> list[Tokens]:
        found = hf(texts, truncation=False, add_special_tokens=special_tokens, return_special_tokens_mask=True,
                   return_offsets_mapping=hf.is_fast)  # a slow tokenizer keeps no offsets
        spans = found["offset_mapping"] if hf.is_fast else [[None] * len(ids) for ids in found["input_ids"]]
        return [Tokens(ids, hf.convert_ids_to_tokens(ids),
                       [None if m else tuple(s) if s else None for s, m in zip(row_spans, mask)],
                       [bool(m) for m in mask])
                for ids, row_spans, mask in zip(found["input_ids"], spans, found["special_tokens_mask"])]

    def hf_decode(ids: list[int], skip_special_tokens: bool) -> str:
        return hf.decode(ids, skip_special_tokens=skip_special_tokens)

    pad = hf.pad_token_id if hf.pad_token_id is not None else 0
    return TextTokenizer(hf_encode_batch, hf_encode_whole, hf_encode_pair_batch, hf_tokens, hf_decode, pad, len(hf),
                         max_length, do_lower_case, long_input, vocab.get)
