"""The wire formats: OpenAI's embeddings, Cohere's and Jina's rerank, vLLM's /score, /classify, /tokenize and
/detokenize, Text Embeddings Inference's /embed, /embed_all, /embed_sparse, /rerank, /predict, /tokenize and
/decode, and the input kinds a request may carry."""

import base64
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import EmptyInput, InputError, InputTooLong, lone_surrogate
from ..quantize import PRECISIONS

EMBED_DTYPES = ("float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2")
BINARY_FORMATS = ("bytes", "bytes_only")  # vLLM's: the values' bytes as the body, not JSON


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. `input` is classified by `parse_input`, so a bad list gets a 400 naming it."""

    model_config = ConfigDict(strict=True)  # "8" is not a dimension, true is not a token id

    input: str | list[Any]
    model: str | None = None
    encoding_format: Literal["float", "base64", "bytes", "bytes_only"] | None = None
    dimensions: int | None = None
    user: str | None = None
    # Extensions beside OpenAI's fields, as in sentence-transformers: prepended text, or a prompt the model names.
    prompt: str | None = None
    prompt_name: str | None = None
    # As sentence-transformers' quantize_embeddings: int8/uint8 ranges from this request's own vectors.
    precision: Literal[PRECISIONS] | None = None
    # vLLM's: keep each input's last N tokens (-1: the model's maximum), counted on its whole tokenization.
    truncate_prompt_tokens: int | None = None
    # vLLM's: the type and byte order of base64 and bytes values (float lists are always floats).
    embed_dtype: Literal[EMBED_DTYPES] | None = None
    endianness: Literal["native", "little", "big"] | None = None
    # vLLM's: false gives each pooled vector as the pooling made it, without the model's normalization (and
    # /pooling's classify its logits, token_embed its vectors unnormalized); `normalize` is its older name.
    use_activation: bool | None = None
    normalize: bool | None = None

    @property
    def activation(self) -> bool | None:
        return self.use_activation if self.use_activation is not None else self.normalize


def infinity_request(body: EmbeddingRequest) -> EmbeddingRequest:
    """infinity's /embeddings: its generated client sends `dimensions` 0 for the model's own."""
    return body.model_copy(update={"dimensions": None}) if body.dimensions == 0 else body


class PoolingRequest(EmbeddingRequest):
    """vLLM's /pooling: an embeddings request with the pooling `task` to run (absent: a classifier's classify, an
    embedding model's embed)."""

    task: Literal["embed", "classify", "token_embed"] | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[int] | list[float] | str  # ints for the int8/uint8/binary precisions


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    id: str  # vLLM's and infinity's; OpenAI's own reply has none, and its SDK keeps what it does not know
    object: Literal["list"] = "list"
    created: int
    data: list[Embedding]
    model: str
    usage: Usage


class RerankDocument(BaseModel):
    text: str


TruncationDirection = Literal["Left", "Right", "left", "right"]


class RerankRequest(BaseModel):
    """Cohere's and Jina's rerank request, as vLLM, infinity and vllm-mlx accept it on /v1/rerank and /rerank, or
    Text Embeddings Inference's: `texts` where the others say `documents`, and a bare list of ranks in reply.
    `top_n` 0 or absent keeps every document; documents may be strings or {"text": ...} objects."""

    model_config = ConfigDict(strict=True)

    query: str
    documents: list[str | RerankDocument] | None = None
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = True
    # TEI's fields. `truncate: false` refuses a long pair; absent or true, long pairs follow the server's policy.
    texts: list[str] | None = None
    raw_scores: bool = False  # a cross-encoder's logits, before its activation (TEI's and infinity's)
    use_activation: bool | None = None  # vLLM's: false, the same logits
    truncate_prompt_tokens: int | None = None  # vLLM's; checked by `check_pair_cuts`
    max_tokens_per_doc: int | None = None  # vLLM's and Cohere's v2; checked by `check_pair_cuts`
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: TruncationDirection = "Right"

    @property
    def tei(self) -> bool:
        return self.texts is not None and self.documents is None


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: Usage
    results: list[RerankResult]


COHERE_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
# Cohere's input types, each the model's own prompt of that name or of the names after it, where it has one
COHERE_INPUT_TYPES = {"search_query": ("search_query", "query"), "search_document": ("search_document", "document",
                      "passage"), "classification": ("classification",), "clustering": ("clustering",),
                      "image": ("image",)}


class CohereContent(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: dict[str, str] | None = None  # {"url": a data URI}


class CohereInput(BaseModel):
    content: list[CohereContent]


class CohereEmbedRequest(BaseModel):
    """Cohere's embed request (/v2/embed, as vLLM serves it, and /v1/embed), as the cohere SDK sends it: `texts`,
    `images` (data URIs) or `inputs` of one text or image each; each of `embedding_types` of every input;
    `truncate` END cuts a long input's end (as the server cuts), START its start, NONE refuses it."""

    model_config = ConfigDict(strict=True)

    model: str | None = None
    input_type: str | None = None
    texts: list[str] | None = None
    images: list[str] | None = None
    inputs: list[CohereInput] | None = None
    embedding_types: list[Literal[COHERE_TYPES]] | None = None
    truncate: Literal["NONE", "START", "END"] = "END"
    output_dimension: int | None = None
    max_tokens: int | None = None
    priority: int | None = None  # one queue here: every request is served in turn


def cohere_inputs(body: CohereEmbedRequest) -> tuple[list[str], str, bool]:
    """The request's inputs as the engine takes them (an image as its data URI), the field they came in, and
    whether any is an image."""
    given = [(field, value) for field, value in (("texts", body.texts), ("images", body.images),
                                                 ("inputs", body.inputs)) if value is not None]
    if len(given) != 1:
        raise InputError("send one of 'texts', 'images' or 'inputs'", "texts")
    field, items = given[0]
    if field == "images":
        bad = next((i for i, image in enumerate(items) if not image.startswith("data:")), None)
        if bad is not None:
            raise InputError(f"image {bad} is not a data URI; send each image as data:image/...;base64,...", field)
    if field != "inputs":
        return items, field, field == "images"
    found, images = [], False
    for i, item in enumerate(items):
        if len(item.content) != 1:
            raise InputError(f"input {i} holds {len(item.content)} contents; each input here is one text or one "
                             "image", field)
        content = item.content[0]
        value = content.text if content.type == "text" else (content.image_url or {}).get("url")
        if value is None:
            raise InputError(f"input {i} has no {'text' if content.type == 'text' else 'image_url.url'}", field)
        if content.type == "image_url" and not value.startswith("data:"):
            raise InputError(f"input {i}'s image is not a data URI; send it as data:image/...;base64,...", field)
        found.append(value)
        images |= content.type == "image_url"
    return found, field, images


def cohere_prompt_name(input_type: str | None, prompts: dict[str, str]) -> str | None:
    """The model's prompt for Cohere's `input_type`: the prompt of that name, or of a name Cohere's input type
    stands for ("search_query": "query"); none where the model has no such prompt. Any other input type must name
    one of the model's prompts."""
    if input_type is None:
        return None
    names = COHERE_INPUT_TYPES.get(input_type, (input_type,))
    found = next((name for name in names if name in prompts), None)
    if found is None and input_type not in COHERE_INPUT_TYPES:
        raise InputError(f"Unsupported input_type {input_type!r}: send one of Cohere's ("
                         f"{', '.join(COHERE_INPUT_TYPES)}) or one of this model's prompts "
                         f"({', '.join(prompts) or 'it has none'})", "input_type")
    return found


class TEITextCuts(BaseModel):
    """What TEI's embedding requests (/embed, /similarity) say of their texts. `truncate: false` refuses long
    inputs; absent or true, they follow the server's policy (cut, unless it runs with --no-truncate). /similarity
    takes them in `parameters` too (huggingface_hub's `sentence_similarity` sends none)."""

    model_config = ConfigDict(strict=True)

    truncate: bool | None = None
    truncation_direction: TruncationDirection = "Right"  # "Left" keeps each input's last tokens
    prompt_name: str | None = None


class TEITextOptions(TEITextCuts):
    """`TEITextCuts` and the served model a request names."""

    model: str | None = None  # embed's: which served model, where several are (TEI serves one)

    @property
    def keep_last(self) -> int | None:
        """vLLM's `truncate_prompt_tokens` for the same cut: -1 (the model's maximum, from the end) for "Left"."""
        return -1 if self.truncation_direction.lower() == "left" else None


class TEIEmbedAllRequest(TEITextOptions):
    """Text Embeddings Inference's POST /embed_all: the texts whose every token's vector is asked for."""

    inputs: str | list[Any]


class TEIEmbedRequest(TEIEmbedAllRequest):
    """Text Embeddings Inference's POST /embed, as its clients send it (huggingface_hub's InferenceClient,
    LangChain's HuggingFaceEndpointEmbeddings)."""

    normalize: bool = True
    dimensions: int | None = None


TextOrPair = Annotated[list[str], Field(min_length=1, max_length=2)]  # [text] or [text, text]


class PredictRequest(TEITextOptions):
    """Text Embeddings Inference's POST /predict: a text, a pair [text, text], or a batch of them [[text], [text,
    text], ...], each scored on every label of a sequence classifier."""

    inputs: str | TextOrPair | Annotated[list[TextOrPair], Field(min_length=1)]
    raw_scores: bool = False  # the logits, before the softmax (or sigmoid)


class Prediction(BaseModel):  # TEI's
    score: float
    label: str


class ClassifyRequest(BaseModel):
    """vLLM's /classify request: one text, a list of texts, or token ids (a list of them, or a list of lists)."""

    model_config = ConfigDict(strict=True)

    input: str | list[Any]
    model: str | None = None
    truncate_prompt_tokens: int | None = None  # as on /v1/embeddings: keep each text's last N tokens
    user: str | None = None
    use_activation: bool | None = None  # vLLM's: false gives each text's logits
    raw_scores: bool | None = None  # infinity's (its client always sends it): infinity's reply, logits if true


class ClassificationData(BaseModel):
    index: int
    label: str  # the most probable label's name
    probs: list[float]
    num_classes: int


class VLLMList(BaseModel):
    """The envelope of vLLM's /pooling, /score and /classify replies; each names its `data`'s type."""

    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list
    usage: Usage


class ClassificationResponse(VLLMList):
    data: list[ClassificationData]


class SparseValue(BaseModel):  # TEI's
    index: int
    value: float


class Pooled(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[int] | list[float] | list[list[float]] | str


class PoolingResponse(VLLMList):
    data: list[Pooled]


Texts = str | list[str]
# vLLM's names for /score's two sides, oldest first
SCORE_SIDES = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2"))


class ScoreRequest(BaseModel):
    """vLLM's /score: the first side (one text, or one per pair) against each text of the second, the sides named
    as any of vLLM's versions names them (`SCORE_SIDES`)."""

    model_config = ConfigDict(strict=True)

    text_1: Texts | None = None
    text_2: Texts | None = None
    queries: Texts | None = None
    documents: Texts | None = None
    items: Texts | None = None
    data_1: Texts | None = None
    data_2: Texts | None = None
    model: str | None = None
    use_activation: bool | None = None  # false: a cross-encoder's logits
    truncate_prompt_tokens: int | None = None  # checked by `check_pair_cuts`

    def sides(self) -> tuple[tuple[str, Texts], tuple[str, Texts]]:
        """The first side and the second, each as (its field, its texts)."""
        for first, second in SCORE_SIDES:
            if getattr(self, first) is not None and getattr(self, second) is not None:
                return (first, getattr(self, first)), (second, getattr(self, second))
        raise InputError("send 'text_1' and 'text_2' (or, as vLLM's newer requests do, 'queries' with 'documents' or "
                         "'items', or 'data_1' and 'data_2')", "text_1")


class Score(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(VLLMList):
    data: list[Score]


class TokenizeRequest(BaseModel):
    """/tokenize as vLLM (`prompt`: one text; the ids and their count) or TEI (`inputs`: texts; each token's id,
    text and place) asks it. The whole text is tokenized, never cut."""

    model_config = ConfigDict(strict=True)

    prompt: str | None = None
    inputs: str | list[str] | None = None
    model: str | None = None
    add_special_tokens: bool = True
    prompt_name: str | None = None  # TEI's: the text tokenized with this prompt of the model's before it


class TokenizeResponse(BaseModel):  # vLLM's
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class TEIToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class DetokenizeRequest(BaseModel):  # vLLM's
    model_config = ConfigDict(strict=True)

    tokens: list[int]
    model: str | None = None


class DecodeRequest(BaseModel):  # TEI's
    model_config = ConfigDict(strict=True)

    ids: list[int] | list[list[int]]
    skip_special_tokens: bool = True


class SimilarityInputs(BaseModel):
    model_config = ConfigDict(strict=True)

    source_sentence: str
    sentences: list[str]


class TEISimilarityRequest(TEITextOptions):
    """TEI's /similarity, which huggingface_hub's `sentence_similarity` also posts to TEI's root route: the cosine
    similarity of `source_sentence` to each of `sentences`, in order. The options may come in `parameters`, as TEI
    reads them, or beside `inputs`, as its other routes take them."""

    inputs: SimilarityInputs
    parameters: TEITextCuts | None = None

    def model_post_init(self, context: Any) -> None:
        if self.parameters is not None:
            for field in self.parameters.model_fields_set:
                setattr(self, field, getattr(self.parameters, field))


class TEIRank(BaseModel):
    index: int
    text: str | None = None
    score: float


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embed"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


@dataclass(frozen=True)
class Inputs:
    """A request's inputs: texts to tokenize, or token ids to embed exactly as given."""

    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids)


def parse_input(value: str | list[Any], max_inputs: int, field: str = "input") -> Inputs:
    """Classify `input` (TEI: `inputs`) as OpenAI does; refuse what would embed nothing or mixes kinds."""
    items = [value] if isinstance(value, str) else value
    if not items:
        raise EmptyInput(f"'{field}' is an empty list; send at least one string or token list", field)
    if all(isinstance(item, str) for item in items):
        inputs = Inputs(texts=items)
    elif all(_is_token_id(item) for item in items):
        inputs = Inputs(token_ids=[items])  # a flat list of ints is one input
    elif all(isinstance(item, list) for item in items):
        inputs = Inputs(token_ids=items)
    else:
        raise InputError(
            f"'{field}' must be a string, a list of strings, a list of token ids or a list of token-id lists, "
            "not a mix of them",
            field,
        )
    if len(inputs) > max_inputs:
        raise InputError(f"'{field}' holds {len(inputs)} inputs; at most {max_inputs} are allowed per request", field)
    for i, item in enumerate(inputs.texts or inputs.token_ids):
        if not item:
            raise EmptyInput(f"input {i} is empty; every input needs at least one character or token", field)
        if inputs.texts is not None and (at := lone_surrogate(item)) is not None:
            raise InputError(f"input {i} holds a lone UTF-16 surrogate at character {at}, which is not text; "
                             "send valid Unicode", field)
        if inputs.token_ids is not None and not all(_is_token_id(t) for t in item):
            raise InputError(f"input {i} must hold only integer token ids", field)
    return inputs


def parse_predict(value: str | list, max_inputs: int) -> tuple[list[str | tuple[str, str]], bool]:
    """TEI's /predict `inputs` (as `PredictRequest` types them) as a list of texts and (first, second) pairs, and
    whether it was a batch: a string or a list of one or two strings is one input; a list of such lists a batch."""
    batch = isinstance(value, list) and isinstance(value[0], list)
    items = value if batch else [[value] if isinstance(value, str) else value]
    if len(items) > max_inputs:
        raise InputError(f"'inputs' holds {len(items)} inputs; at most {max_inputs} are allowed per request", "inputs")
    for i, item in enumerate(items):
        if not any(item):  # as TEI: a pair needs one text, a single text a character
            raise EmptyInput(f"{f'input {i}' if batch else 'inputs'} is empty; send at least one character", "inputs")
        for text in item:
            if (at := lone_surrogate(text)) is not None:
                raise InputError(f"{f'input {i}' if batch else 'inputs'} holds a lone UTF-16 surrogate at character "
                                 f"{at}, which is not text; send valid Unicode", "inputs")
    return [item[0] if len(item) == 1 else (item[0], item[1]) for item in items], batch


def parse_score(body: ScoreRequest, max_inputs: int) -> tuple[list[str], list[str]]:
    """vLLM's pairs: one first text against every second one, or the two lists paired one to one."""
    (one, firsts), (two, seconds) = body.sides()
    firsts = [firsts] if isinstance(firsts, str) else firsts
    seconds = [seconds] if isinstance(seconds, str) else seconds
    if not firsts or not seconds:
        raise InputError(f"'{one if not firsts else two}' is an empty list; send at least one text",
                         one if not firsts else two)
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    if len(firsts) != len(seconds):
        raise InputError(f"'{one}' holds {len(firsts)} texts and '{two}' {len(seconds)}: send one '{one}', or as "
                         f"many as '{two}' to pair them one to one", one)
    if len(seconds) > max_inputs:
        raise InputError(f"'{two}' holds {len(seconds)} texts; at most {max_inputs} are allowed per request", two)
    for field, texts in ((one, firsts), (two, seconds)):
        for i, text in enumerate(texts):
            if field == one and not text.strip():  # as a rerank's query; a blank document still scores
                raise InputError(f"'{one}' text {i} is empty or blank; send the text to score against", field)
            if (at := lone_surrogate(text)) is not None:
                raise InputError(f"'{field}' text {i} holds a lone UTF-16 surrogate at character {at}, which is not "
                                 "text", field)
    return firsts, seconds


def check_pair_cuts(truncate_prompt_tokens: int | None, max_tokens_per_doc: int | None, max_length: int) -> None:
    """vLLM's cuts of a scored pair below the model's length are not taken here, where a long pair is cut from the
    end of its longer text at the model's length: refused, not ignored. At or past that length they cut nothing."""
    if max_tokens_per_doc is not None and max_tokens_per_doc < 1:
        raise InputError(f"max_tokens_per_doc must be a positive integer, got {max_tokens_per_doc}",
                         "max_tokens_per_doc")
    for field, n in (("truncate_prompt_tokens", truncate_prompt_tokens), ("max_tokens_per_doc", max_tokens_per_doc)):
        if n is not None and n != -1 and n < max_length:
            raise InputError(f"{field} {n} is not supported for scored pairs: a pair is cut from the end of its "
                             f"longer text at the model's maximum of {max_length} tokens; send {max_length} or more, "
                             "or leave it out", field)


def parse_rerank(body: RerankRequest, max_inputs: int) -> list[str]:
    """The documents' texts (TEI's `texts`); a request that would rank nothing, or more than `max_inputs`, is
    refused."""
    field = "texts" if body.tei else "documents"
    documents = body.texts if body.tei else body.documents
    if documents is None:
        raise InputError("'documents' is missing; send the texts to rank", "documents")
    if not body.query.strip():
        raise InputError(f"'query' is empty or blank; send the text to rank the {field} against", "query")
    if not documents:
        raise EmptyInput(f"'{field}' is an empty list; send at least one document", field)
    if len(documents) > max_inputs:
        raise InputError(f"'{field}' holds {len(documents)} documents; at most {max_inputs} are allowed per "
                         "request", field)
    if body.top_n is not None and body.top_n < 0:
        raise InputError(f"'top_n' must be 0 (every document) or more, got {body.top_n}", "top_n")
    texts = [d if isinstance(d, str) else d.text for d in documents]
    for i, text in enumerate([body.query, *texts]):
        if (at := lone_surrogate(text)) is not None:
            where = "'query'" if i == 0 else f"document {i - 1}"
            raise InputError(f"{where} holds a lone UTF-16 surrogate at character {at}, which is not text; send "
                             "valid Unicode", "query" if i == 0 else field)
    return texts


def check_token_ids(token_ids: list[list[int]], vocab_size: int, max_length: int,
                    long_input: str) -> list[list[int]]:
    """Ids outside the vocabulary would index past the embedding table; long rows are cut, refused or kept whole
    (for the engine to chunk) as texts are."""
    for i, ids in enumerate(token_ids):
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise InputError(f"input {i} has a token id outside this model's vocabulary [0, {vocab_size})", "input")
        if len(ids) > max_length and long_input == "error":
            raise InputTooLong(f"input {i} has {len(ids)} tokens, more than the model's maximum of {max_length}")
    return token_ids if long_input == "chunk" else [ids[:max_length] for ids in token_ids]


def encode_vectors(vectors: np.ndarray, encoding_format: str | None, embed_dtype: str | None = None,
                   endianness: str | None = None) -> list[list[float]] | list[str]:
    """base64 is the values' bytes, what the openai SDK asks for unless told otherwise: float32 little-endian, or
    the type a precision made them; vLLM's `embed_dtype` and `endianness` choose another type and byte order for
    float vectors (`typed_values`)."""
    if encoding_format != "base64":
        return vectors.tolist()
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in typed_values(vectors, embed_dtype, endianness)]


def typed_values(values: np.ndarray, embed_dtype: str | None = None, endianness: str | None = None) -> np.ndarray:
    """float values in vLLM's `embed_dtype`, rounded to nearest even as torch rounds (bfloat16 and the fp8 types as
    their bit patterns: numpy has no such types), in the byte order `endianness` names (little by default).
    fp8_e4m3 has no infinity: a value past its largest, 448, is given as 448 where torch would give NaN."""
    if embed_dtype == "float16":
        values = values.astype(np.float16)
    elif embed_dtype == "bfloat16":
        values = bfloat16_bits(values)
    elif embed_dtype == "fp8_e4m3":
        values = fp8_bits(values, man_bits=3, bias=7, largest=0x7E)
    elif embed_dtype == "fp8_e5m2":
        values = fp8_bits(values, man_bits=2, bias=15, largest=0x7B)
    order = {"big": ">", "native": "="}.get(endianness or "little", "<")
    return values.astype(values.dtype.newbyteorder(order), copy=False)


def bfloat16_bits(vectors: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest even as torch rounds; never NaN here."""
    bits = np.ascontiguousarray(vectors, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def fp8_bits(values: np.ndarray, man_bits: int, bias: int, largest: int) -> np.ndarray:
    """float32 values as 8-bit float bit patterns (uint8: sign, exponent, `man_bits` of mantissa), each rounded once
    to nearest even; magnitudes past the type's `largest` code saturate to it."""
    magnitude = np.abs(np.ascontiguousarray(values, np.float32))
    bits = magnitude.view(np.uint32)
    shift = 23 - man_bits  # float32's mantissa bits dropped
    rounded = (bits + ((1 << (shift - 1)) - 1) + ((bits >> shift) & 1)) >> shift
    normal = rounded.astype(np.int64) - ((127 - bias) << man_bits)  # float32's exponent bias to the type's
    smallest = np.float32(2.0 ** (1 - bias - man_bits))  # the least subnormal; below the least normal, its multiples
    subnormal = np.rint(magnitude / smallest).astype(np.int64)
    codes = np.where(magnitude < np.float32(2.0 ** (1 - bias)), subnormal, np.minimum(normal, largest))
    return (codes | np.where(np.signbit(values), 0x80, 0)).astype(np.uint8)


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
