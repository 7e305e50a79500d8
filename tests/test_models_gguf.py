"""GGUF: a tiny llama / qwen2 written by the test (mixed Q4_0, Q4_1, Q8_0, F32), against PyTorch on the same weights."""

import shutil

import numpy as np
import pytest

from embedder import EmbeddingEngine
from embedder.errors import ModelError
from embedder.models.gguf import GLOBAL_NAMES, TENSOR_NAMES
from reference import cosine, require_oracle
from test_models_encoders import TEXTS
from test_models_decoders import torch_reference
from tiny_models import tiny_transformer


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
    to_gguf = {f"model.layers.{{}}.{v}": f"blk.{{}}.{k}" for k, v in TENSOR_NAMES.items()}
    to_gguf.update({f"{v}": k for k, v in GLOBAL_NAMES.items()})
    w = gguf.GGUFWriter(str(out), arch)
    for key, value in [("context_length", c.max_position_embeddings), ("embedding_length", c.hidden_size),
                       ("block_count", c.num_hidden_layers), ("feed_forward_length", c.intermediate_size),
                       ("head_count", c.num_attention_heads), ("head_count_kv", c.num_key_value_heads),
                       ("layer_norm_rms_eps", c.rms_norm_eps), ("rope_freq_base", c.rope_parameters["rope_theta"])]:
        getattr(w, f"add_{key}")(value)
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            parts = name.split(".")
            stem, part = ".".join(parts[:-1]), parts[-1]
            if stem.startswith("model.layers."):
                layer = parts[2]
                gname = to_gguf["model.layers.{}." + ".".join(parts[3:-1])].format(layer) + f".{part}"
            else:
                gname = f"{to_gguf[stem]}.{part}"
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


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_matches_pytorch_on_the_same_weights(tmp_path, minilm_path, monkeypatch, arch):
    monkeypatch.setenv("EMBED_CACHE", str(tmp_path / "cache"))
    hf = tiny_transformer(arch, minilm_path, tmp_path, causal_lm=True)
    (tmp_path / "g").mkdir()
    reference = write_gguf(hf, tmp_path / "g" / "tiny.gguf", arch)
    engine = EmbeddingEngine(str(tmp_path / "g" / "tiny.gguf"), max_length=64)
    info = engine.info()
    assert info["architecture"] == arch and info["pooling"] == "mean"
    assert info["quantization"]["bits"] == 4 and info["quantization"]["model.layers.0.mlp.up_proj"]["bits"] == 8
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
