"""GGUF: a tiny llama / qwen2 written by the test (mixed Q4_0, Q4_1, Q8_0, F32), against PyTorch on the same weights."""

import json
import shutil

import numpy as np
import pytest

from embedder import EmbeddingEngine
from embedder.errors import ModelError
from reference import cosine, require_oracle, st_reference
from test_models_encoders import TEXTS
from test_models_decoders import torch_reference
from tiny_models import copy_tokenizer, save_sentence_transformer, tiny_encoder, tiny_transformer


def quant_type(name: str):
    """A mix, as llama.cpp files are: attention Q4_0, MLP Q8_0, embeddings Q4_1, norms and biases F32."""
    from gguf import GGMLQuantizationType as Q

    if not name.endswith(".weight") or "norm" in name:
        return Q.F32
    return Q.Q4_1 if name.startswith("token_embd") else Q.Q4_0 if ".attn_" in name else Q.Q8_0


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to llama's q/k rows."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_dir, out, arch: str):
    """Write the model as GGUF and load the same quantize-dequantized weights back into PyTorch, the reference."""
    import gguf
    require_oracle()
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir))
    c = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)  # llama.cpp's own map
    w = gguf.GGUFWriter(str(out), arch)
    for key, value in [("context_length", c.max_position_embeddings), ("embedding_length", c.hidden_size),
                       ("block_count", c.num_hidden_layers), ("feed_forward_length", c.intermediate_size),
                       ("head_count", c.num_attention_heads), ("head_count_kv", c.num_key_value_heads),
                       ("layer_norm_rms_eps", c.rms_norm_eps), ("rope_freq_base", c.rope_parameters["rope_theta"])]:
        getattr(w, f"add_{key}")(value)
    if arch == "glm4":  # as llama.cpp's Glm4Model writes it: the rotary part of each head
        w.add_key_length(c.head_dim)
        w.add_rope_dimension_count(int(c.head_dim * c.rope_parameters["partial_rotary_factor"]))
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
            parts = name.split(".")
            qtype = quant_type(gname)
            data = tensor.float().numpy()
            if qtype != gguf.GGMLQuantizationType.F32:
                packed = gguf.quants.quantize(data, qtype)
                tensor.copy_(torch.from_numpy(gguf.quants.dequantize(packed, qtype)))
            else:
                packed = data
            if arch == "llama" and parts[-2] in ("q_proj", "k_proj"):
                heads = c.num_attention_heads if parts[-2] == "q_proj" else c.num_key_value_heads
                packed = llama_cpp_permute(packed, heads)
            w.add_tensor(gname, packed, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shutil.copy(hf_dir / "tokenizer.json", out.parent / "tokenizer.json")
    model.model.save_pretrained(str(out.parent / "reference"))  # the dequantized weights
    return out.parent / "reference"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "glm4"])
def test_gguf_matches_pytorch_on_the_same_weights(tmp_path, minilm_path, monkeypatch, arch):
    monkeypatch.setenv("EMBED_CACHE", str(tmp_path / "cache"))
    hf = tiny_transformer(arch, minilm_path, tmp_path, causal_lm=True)
    (tmp_path / "g").mkdir()
    reference = write_gguf(hf, tmp_path / "g" / "tiny.gguf", arch)
    engine = EmbeddingEngine(str(tmp_path / "g" / "tiny.gguf"), max_length=64)
    info = engine.info()
    assert info["architecture"] == arch and info["pooling"] == "mean"
    up = "model.layers.0.mlp." + ("gate_up_proj" if arch == "glm4" else "up_proj")  # GLM4 fuses gate and up
    assert info["quantization"]["bits"] == 4 and info["quantization"][up]["bits"] == 8
    got = engine.embed(TEXTS)
    expected = torch_reference(reference, engine.tokenize(TEXTS), "mean")
    assert cosine(got, expected).min() >= 0.999
    engine.unload()
    again = EmbeddingEngine(str(tmp_path / "g" / "tiny.gguf"), max_length=64, pooling="last")  # cached conversion
    assert again.info()["path"] == info["path"]
    again.unload()


def test_gguf_unsupported_architecture(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="unsupported GGUF architecture 'mamba'"):
        EmbeddingEngine(str(tmp_path / "x.gguf")).load()


# ---- encoders as llama.cpp writes them (Ollama's all-minilm, nomic-embed-text, mxbai-embed-large blobs) -------

# Each K-quant's fp16 scale fields (offsets in its block) and the value set there, so the random blocks decode to
# weights of a trained model's size (std about 0.03); the rest of each block is random bytes.
K_QUANT_SCALES = {"Q2_K": ((80, 82), 0.0024), "Q3_K": ((108,), 0.0007), "Q4_K": ((0, 2), 0.00014),
                  "Q5_K": ((0, 2), 0.00007), "Q6_K": ((208,), 0.00003)}


def k_quant_blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    import gguf

    per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // per_block, block_bytes), dtype=np.uint8)
    offsets, value = K_QUANT_SCALES[qtype.name]
    for offset in offsets:
        raw[..., offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    return raw.reshape(rows, -1)


def write_encoder_gguf(hf_dir, out, types, arch: str = "bert") -> None:
    """The encoder in `hf_dir` (BERT, or NomicBERT as transformers saves it: Nomic's published weight names) as
    llama.cpp's converter writes it: its tensor names (the gguf package's own map), its metadata, the WordPiece
    vocabulary in phantom-space form, mean pooling. `types(name, shape)` picks each 2-D weight's block type; K-quant
    ones get random blocks. `hf_dir`'s weights become what every tensor decodes to, so the transformers model there
    is the reference."""
    import gguf
    from safetensors.numpy import load_file, save_file

    config = json.loads((hf_dir / "config.json").read_text())
    state = load_file(str(hf_dir / "model.safetensors"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper().replace("-", "_")], config["num_hidden_layers"])
    w = gguf.GGUFWriter(str(out), arch)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_head_count(config["num_attention_heads"])
    w.add_layer_norm_eps(config["layer_norm_eps"])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)
    if arch == "nomic-bert":
        w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    vocab = json.loads((hf_dir / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    w.add_tokenizer_model("bert")
    w.add_token_list([t if t.startswith("[") and t.endswith("]") else t[2:] if t.startswith("##") else "\u2581" + t
                      for t in tokens])
    for key, token in (("unk", "[UNK]"), ("bos", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]")):  # llama.cpp's keys
        getattr(w, f"add_{key}_token_id")(vocab[token])
    rng = np.random.default_rng(0)
    for key, data in state.items():
        if key.endswith("position_ids"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        data = data.astype(np.float32)
        qtype = types(name, data.shape) if data.ndim == 2 else gguf.GGMLQuantizationType.F32
        if qtype.name in K_QUANT_SCALES:
            packed = k_quant_blocks(*data.shape, qtype, rng)
        elif qtype != gguf.GGMLQuantizationType.F32:
            packed = gguf.quants.quantize(data, qtype)
        else:
            packed = data
        if qtype != gguf.GGMLQuantizationType.F32:
            state[key] = gguf.quants.dequantize(packed, qtype)
        w.add_tensor(name, packed, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("arch", ["bert", "nomic-bert"])
def test_encoder_gguf_matches_the_safetensors_model(tmp_path, minilm_path, monkeypatch, arch):
    """Q8_0 as Ollama ships all-minilm and nomic-embed-text, no tokenizer.json beside the file: the vocabulary,
    pooling and normalization come from the GGUF metadata, and the vectors match the unquantized model's."""
    from gguf import GGMLQuantizationType as Q
    from test_models_rotary import tiny_port

    monkeypatch.setenv("EMBED_CACHE", str(tmp_path / "cache"))
    if arch == "bert":
        hf = tiny_encoder("bert", minilm_path, tmp_path)
    else:  # trained-model-sized weights: Q8_0's own error stays as small as in a real checkpoint
        hf, _ = tiny_port("nomic_bert", minilm_path, tmp_path, initializer_range=0.02)
    unquantized = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=128)
    expected, tokens = st_reference(unquantized, TEXTS)
    (tmp_path / "g").mkdir()
    write_encoder_gguf(hf, tmp_path / "g" / f"{arch}.gguf", lambda name, shape: Q.Q8_0, arch)
    engine = EmbeddingEngine(str(tmp_path / "g" / f"{arch}.gguf"), max_length=128)
    info = engine.info()
    assert info["architecture"] == arch.replace("-", "_") and info["pooling"] == "mean" and info["normalize"]
    assert info["quantization"]["bits"] == 8
    assert engine.tokens_per_text(TEXTS) == tokens
    assert cosine(engine.embed(TEXTS), expected).min() >= 0.999
    engine.unload()


def test_k_quant_gguf_matches_its_dequantized_weights(tmp_path, minilm_path, monkeypatch):
    """Q2_K to Q6_K and Q5_0 (blocks MLX cannot read exactly) dequantized by the gguf package, stored as MLX 8-bit:
    equal to PyTorch running what the blocks decode to."""
    require_oracle()
    from gguf import GGMLQuantizationType as Q
    from transformers import BertConfig, BertModel

    import torch

    monkeypatch.setenv("EMBED_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    hf = tmp_path / "hf-bert-wide"  # K-quant blocks hold 256 weights: rows of 256 and 512
    BertModel(BertConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=128), add_pooling_layer=False).save_pretrained(str(hf))
    copy_tokenizer(minilm_path, hf)
    mix = {"attn_q": Q.Q4_K, "attn_k": Q.Q5_K, "attn_v": Q.Q6_K, "attn_output": Q.Q3_K, "ffn_up": Q.Q2_K,
           "ffn_down": Q.Q5_0, "token_embd": Q.Q4_K}
    (tmp_path / "g").mkdir()
    write_encoder_gguf(hf, tmp_path / "g" / "wide.gguf",
                    lambda name, shape: next((t for part, t in mix.items() if f"{part}." in name), Q.F32))
    expected, tokens = st_reference(save_sentence_transformer(hf, tmp_path / "st", "mean", True, 128), TEXTS)
    engine = EmbeddingEngine(str(tmp_path / "g" / "wide.gguf"))
    assert engine.info()["quantization"]["bits"] == 8
    got = engine.embed(TEXTS)
    assert np.isfinite(got).all() and engine.tokens_per_text(TEXTS) == tokens
    assert cosine(got, expected).min() >= 0.9999  # 8-bit storage of the decoded weights: measured 0.999994
    engine.unload()
