"""`embed convert` round trips, `embed models`, and a clear error for what embed cannot run."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.convert import app as convert_app
from cli.models import app as models_app
from embedder import EmbeddingEngine
from embedder.models.convert import ConvertOptions, convert
from embedder.errors import InputError, ModelError
from test_models_encoders import TEXTS, cosine
from tiny_models import save_sentence_transformer, tiny_transformer

GOLDEN = Path(__file__).parent / "golden"


def test_quantize_4bit_minilm_round_trip(tmp_path, minilm_path):
    result = CliRunner().invoke(convert_app, [str(minilm_path), "-o", str(tmp_path / "q4"), "--quantize", "4"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "q4"
    assert {"modules.json", "1_Pooling", "tokenizer.json", "config.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    ratio = (out / "model.safetensors").stat().st_size / (minilm_path / "model.safetensors").stat().st_size
    assert 1 / 7 < ratio < 1 / 5.5  # 4 bits plus a float16 scale and bias per 32 weights: 5 bits of 32
    quantized, full = EmbeddingEngine(str(out)), EmbeddingEngine(str(minilm_path))
    info = quantized.info()
    assert info["quantization"]["bits"] == 4 and info["normalize"] and info["dim"] == 384
    texts = [t for t in json.loads((GOLDEN / "minilm_texts.json").read_text(encoding="utf-8")) if len(t) < 300][::4]
    c = cosine(quantized.embed(texts), full.embed(texts))
    # One-word texts ("No!", "?") lose the most.
    assert c.mean() >= 0.95 and c.min() >= 0.89, (c.mean(), c.min())
    assert quantized.tokens_per_text(TEXTS) == full.tokens_per_text(TEXTS)
    quantized.unload()
    full.unload()
    with pytest.raises(ModelError, match="already quantized"):
        convert(ConvertOptions(str(out), tmp_path / "again", quantize=8))


def test_convert_decoder_keeps_prompts_and_pooling(tmp_path, minilm_path):
    hf = tiny_transformer("qwen3", minilm_path, tmp_path)
    prompts = {"query": "Instruct: find passages\nQuery:"}
    st = save_sentence_transformer(hf, tmp_path / "st", "lasttoken", True, max_seq_length=64, prompts=prompts)
    out = convert(ConvertOptions(str(st), tmp_path / "q8", quantize=8, group_size=32, dtype="bfloat16"))
    quantized, full = EmbeddingEngine(str(out), dtype="float32"), EmbeddingEngine(str(st))
    info = quantized.info()
    assert (info["pooling"], info["prompts"]["query"], info["quantization"]["bits"]) == ("lasttoken", prompts["query"], 8)
    prompt = full.resolve_prompt(prompt_name="query")
    assert cosine(quantized.embed(TEXTS, prompt=prompt), full.embed(TEXTS, prompt=prompt)).min() >= 0.99
    quantized.unload()
    full.unload()


def test_convert_refuses_bad_options(tmp_path, minilm_path):
    with pytest.raises(InputError, match="bits"):
        convert(ConvertOptions(str(minilm_path), tmp_path / "x", quantize=7))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        convert(ConvertOptions(str(minilm_path), tmp_path / "full"))


def test_models_lists_and_describes(minilm_path):
    listed = CliRunner().invoke(models_app, ["--json"])
    assert listed.exit_code == 0
    supported = json.loads(listed.stdout)
    assert {"bert", "modernbert", "gemma3_text", "qwen3", "llama"} <= set(supported["architectures"])
    assert {"bert", "mpnet", "distilbert"} <= set(supported["own_encoders"])
    assert "qwen3" not in supported["own_encoders"]
    assert {"bert", "xlm-roberta", "modernbert"} <= set(supported["rerankers"]) and "mpnet" not in supported["rerankers"]
    assert {"bert", "xlm-roberta", "distilbert"} <= set(supported["sparse"]) and "mpnet" not in supported["sparse"]
    table = CliRunner().invoke(models_app, [], env={"COLUMNS": "220"})
    rows = {cells[0]: cells[1:] for line in table.stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 6}
    assert rows["mpnet"][0] == "embed's MLX encoder" and rows["qwen3"][:2] == ["mlx-lm (the llm extra), pooled", "yes"]
    assert rows["bert"][1:4] == ["yes", "yes", "yes"] and rows["siglip"][0] == "mlx-embeddings (the images extra)"
    described = CliRunner().invoke(models_app, [str(minilm_path)], env={"COLUMNS": "160"})
    assert described.exit_code == 0
    lines = {cells[0]: cells[1] for line in described.stdout.splitlines()
             if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2}
    assert (lines["architecture"], lines["dim"], lines["max_length"], lines["pooling"], lines["normalize"]) == (
        "bert", "384", "256", "mean", "true")
    described_json = json.loads(CliRunner().invoke(models_app, [str(minilm_path), "--json"]).stdout)
    assert described_json["dim"] == 384


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "hidden_size": 8}))
    with pytest.raises(ModelError, match="unsupported architecture 'wav2vec2'.*mlx-lm"):
        EmbeddingEngine(str(tmp_path)).load()
    result = CliRunner().invoke(models_app, [str(tmp_path)])
    assert result.exit_code == 1 and "unsupported architecture 'wav2vec2'" in result.output
