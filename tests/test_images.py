"""Image embeddings: a tiny random SigLIP built by the tests against transformers' SigLIP (both towers), then real
PNG files through `embed` and data URIs through `embed serve`."""

import base64
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import PACKED_DTYPE_FIDELITY, cosine, needs_bf16, needs_f16, require_oracle
from tiny_models import copy_tokenizer

from embedder import EmbeddingEngine
from embedder.errors import InputError

pytest.importorskip("mlx_embeddings")
Image = pytest.importorskip("PIL.Image")

TEXTS = ["a photo of a cat", "a red square", "東京の夜景", "x", "a long caption " * 20]
TEXT_LENGTH = 16  # the tiny text tower's positions: texts are padded to it, as SigLIP's processor pads them


@pytest.fixture(scope="module")
def siglip(tmp_path_factory, minilm_path):
    """A 2-layer SigLIP (32x32 images in 8x8 patches) with all-MiniLM-L6-v2's tokenizer, saved as transformers
    saves one, with its image processor's preprocessor_config.json."""
    require_oracle()
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    tower = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
    config = SiglipConfig(text_config=dict(vocab_size=30522, max_position_embeddings=TEXT_LENGTH, pad_token_id=0,
                                           **tower),
                          vision_config=dict(image_size=32, patch_size=8, **tower))
    out = tmp_path_factory.mktemp("siglip") / "tiny-siglip"
    SiglipModel(config).eval().save_pretrained(str(out))
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(out))
    copy_tokenizer(minilm_path, out)
    settings = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": TEXT_LENGTH}))
    return out


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of generated images: PNG and JPEG, RGB, RGBA and grayscale, sizes unlike the model's 32x32."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i, (mode, size, ext) in enumerate([("RGB", (48, 40), "png"), ("RGBA", (32, 32), "png"),
                                           ("L", (64, 20), "png"), ("RGB", (100, 77), "jpg")]):
        pixels = rng.integers(0, 256, size=(size[1], size[0], len(mode)), dtype=np.uint8).squeeze()
        Image.fromarray(pixels, mode).save(folder / f"img{i}.{ext}")
    return sorted(folder.iterdir())


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_text_tower_matches_transformers(siglip):
    import torch
    from transformers import SiglipModel

    engine = EmbeddingEngine(str(siglip))
    ids = engine.tokenize(TEXTS)
    padded = torch.tensor([row + [0] * (TEXT_LENGTH - len(row)) for row in ids])
    with torch.no_grad():
        want = SiglipModel.from_pretrained(str(siglip)).get_text_features(input_ids=padded)
    got = engine.embed(TEXTS)
    assert cosine(got, unit(getattr(want, "pooler_output", want))).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # normalized, as SigLIP compares them


def test_image_tower_matches_transformers(siglip, pictures):
    import torch
    from transformers import SiglipImageProcessor, SiglipModel

    processor = SiglipImageProcessor.from_pretrained(str(siglip))
    pixels = processor([Image.open(p) for p in pictures], return_tensors="pt")["pixel_values"]
    engine = EmbeddingEngine(str(siglip))
    ours = np.stack([engine.model.images.pixels(p.read_bytes(), str(p)) for p in pictures])
    np.testing.assert_allclose(ours, pixels.permute(0, 2, 3, 1).numpy(), atol=1e-4)  # the same preprocessing
    with torch.no_grad():
        want = SiglipModel.from_pretrained(str(siglip)).get_image_features(pixel_values=pixels)
    got = engine.embed_images(pictures)
    assert got.shape == (len(pictures), 64)
    assert cosine(got, unit(getattr(want, "pooler_output", want))).min() >= 0.9999
    assert cosine(engine.embed_images([p.read_bytes() for p in pictures]), got).min() >= 0.99999


def test_bad_images_and_text_models_are_refused(siglip, engine, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="broken.png: not an image"):
        EmbeddingEngine(str(siglip)).embed_images([broken])
    with pytest.raises(InputError, match="embeds text only"):
        engine.embed_images([broken])


def test_embed_a_folder_of_images_to_parquet(siglip, pictures, tmp_path):
    """`embed images/ -m SIGLIP -o imgs.parquet`: one row per image, id = its path, the engine's vectors."""
    out = tmp_path / "imgs.parquet"
    run = subprocess.run([sys.executable, "-m", "cli", str(pictures[0].parent), "-m", str(siglip), "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    table = pq.read_table(out)
    assert table["id"].to_pylist() == [str(p) for p in pictures]
    assert table["tokens"].to_pylist() == [16] * len(pictures)  # 32x32 images in 8x8 patches
    got = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert cosine(got, EmbeddingEngine(str(siglip)).embed_images(pictures)).min() >= 0.99999


def test_a_text_model_names_the_image_it_cannot_embed(pictures):
    run = subprocess.run([sys.executable, "-m", "cli", str(pictures[0])], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and f"{pictures[0]}: " in run.stderr and "embeds text only" in run.stderr


def data_uri(path) -> str:
    kind = "jpeg" if path.suffix == ".jpg" else path.suffix[1:]
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def test_server_takes_images_as_data_uris_beside_texts(siglip, pictures):
    import httpx
    import openai
    from test_server import running_server

    engine = EmbeddingEngine(str(siglip))
    with running_server(f"siglip={siglip}") as url:
        inputs = [data_uri(pictures[0]), TEXTS[0], data_uri(pictures[3])]
        reply = openai.OpenAI(base_url=f"{url}/v1", api_key="unused").embeddings.create(model="siglip", input=inputs)
        got = np.array([d.embedding for d in reply.data])
        assert cosine(got[[0, 2]], engine.embed_images([pictures[0], pictures[3]])).min() >= 0.99999
        assert cosine(got[[1]], engine.embed(TEXTS[:1])).min() >= 0.99999
        assert reply.usage.total_tokens == 16 + len(engine.tokenize(TEXTS[:1])[0]) + 16
        for bad in ("data:image/png;base64,%%%", "data:image/png,raw", "data:image/png;base64," + base64.b64encode(
                b"not an image").decode()):
            answer = httpx.post(f"{url}/v1/embeddings", json={"model": "siglip", "input": [bad]}, timeout=60)
            assert answer.status_code == 400 and "input 0" in answer.json()["error"]["message"], answer.text
        # Cohere's images (data URIs), and its inputs of one image or text each
        cohere = httpx.post(f"{url}/v2/embed", json={"model": "siglip", "input_type": "image",
                                                     "images": [data_uri(pictures[0])]}, timeout=60).json()
        assert cohere["embeddings"]["float"][0] == reply.data[0].embedding and "texts" not in cohere
        content = [{"type": "image_url", "image_url": {"url": data_uri(pictures[3])}}, {"type": "text", "text": TEXTS[0]}]
        mixed = httpx.post(f"{url}/v2/embed", json={"model": "siglip", "inputs": [{"content": [c]} for c in content]},
                           timeout=60).json()["embeddings"]["float"]
        assert mixed == [reply.data[2].embedding, reply.data[1].embedding]
        fused = httpx.post(f"{url}/v2/embed", json={"model": "siglip", "inputs": [{"content": content}]}, timeout=60)
        assert fused.status_code == 400 and "each input here is one text or one image" in fused.text


@pytest.mark.parametrize("dtype", [pytest.param("float16", marks=needs_f16),
                                   pytest.param("bfloat16", marks=needs_bf16)])
def test_both_towers_in_16_bits_stay_near_float32(siglip, pictures, dtype):
    """`dtype="float16"` on an AVX512-FP16 CPU, or `"bfloat16"` on an AVX512-BF16 one, runs both towers' Linear
    layers in its kernel."""
    full, half = (EmbeddingEngine(str(siglip), dtype=d) for d in ("float32", dtype))
    assert cosine(half.embed(TEXTS), full.embed(TEXTS)).min() >= PACKED_DTYPE_FIDELITY[dtype]
    assert cosine(half.embed_images(pictures), full.embed_images(pictures)).min() >= PACKED_DTYPE_FIDELITY[dtype]
