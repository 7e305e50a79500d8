"""NomicBERT and GTE ("new"), tiny and random, against sentence-transformers on transformers' ports; the published
remote-code layouts (config names, weight names) against the ports'; the remote code's RoPE options by hand."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from reference import (assert_one_call_on_real_tokens, assert_packed_near_float32, cosine, needs_bf16, needs_f16,
                       needs_int8, require_oracle, st_reference)
from test_models_encoders import TEXTS  # short next to long (past max_seq_length): every batch pads, some truncate
from tiny_models import save_sentence_transformer, save_with_noisy_norms

from embedder import EmbeddingEngine

# Weights drawn wide, so attention is far from uniform and a wrong rotation cannot hide.
SMALL = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             initializer_range=0.3)


def tiny_port(kind: str, tokenizer_src: Path, work: Path, **overrides):
    """transformers' NomicBertModel or GteModel with random weights, norms and biases given noise, saved to
    `work/hf-kind`; returns the path and the model (its in-memory state dict uses the port's names)."""
    require_oracle()
    import torch
    import transformers

    torch.manual_seed(0)
    config_class, model_class = {"nomic_bert": ("NomicBertConfig", "NomicBertModel"),
                                 "gte": ("GteConfig", "GteModel")}[kind]
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**{**SMALL, **overrides})).eval()
    return save_with_noisy_norms(model, work / f"hf-{kind}", tokenizer_src), model


def port_layer(key: str) -> tuple[int, str] | None:
    """(layer, rest) of a port's per-layer key, `layers.N.rest`."""
    if not key.startswith("layers."):
        return None
    _, n, rest = key.split(".", 2)
    return int(n), rest


def published_nomic(state: dict) -> dict:
    """The port's weights under Nomic's remote-code names: fused Wqkv, fc11 (value), fc12 (gate), fc2."""
    import torch

    names = {"self_attn.o_proj": "attn.out_proj", "mlp.up_proj": "mlp.fc11", "mlp.gate_proj": "mlp.fc12",
             "mlp.down_proj": "mlp.fc2", "post_attention_layernorm": "norm1", "post_mlp_layernorm": "norm2"}
    out = {}
    for key, value in state.items():
        if (found := port_layer(key)) is None:
            out[key.replace("embeddings.LayerNorm.", "emb_ln.")] = value
            continue
        n, rest = found
        module, part = rest.rsplit(".", 1)
        if module.startswith("self_attn.") and module != "self_attn.o_proj":
            if module == "self_attn.q_proj":
                out[f"encoder.layers.{n}.attn.Wqkv.{part}"] = torch.cat(
                    [state[f"layers.{n}.self_attn.{p}_proj.{part}"] for p in "qkv"])
            continue
        out[f"encoder.layers.{n}.{names[module]}.{part}"] = value
    return out


def published_gte(state: dict, pack_qkv: bool = True) -> dict:
    """The port's weights under Alibaba-NLP/new-impl's names: qkv_proj (or q/k/v_proj), up_gate_proj (up, gate)."""
    import torch

    names = {"self_attn.o_proj": "attention.o_proj", "mlp.down_proj": "mlp.down_proj",
             "post_attention_layernorm": "attn_ln", "post_mlp_layernorm": "mlp_ln"}
    out = {}
    for key, value in state.items():
        if (found := port_layer(key)) is None:
            out[key] = value
            continue
        n, rest = found
        module, part = rest.rsplit(".", 1)
        base = f"encoder.layer.{n}."
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if not pack_qkv:
                out[base + module.replace("self_attn.", "attention.") + f".{part}"] = value
            elif module == "self_attn.q_proj":
                out[f"{base}attention.qkv_proj.{part}"] = torch.cat(
                    [state[f"layers.{n}.self_attn.{p}_proj.{part}"] for p in "qkv"])
        elif module == "mlp.up_proj":
            out[f"{base}mlp.up_gate_proj.{part}"] = torch.cat([value, state[f"layers.{n}.mlp.gate_proj.{part}"]])
        elif module != "mlp.gate_proj":
            out[f"{base}{names[module]}.{part}"] = value
    return out


def nomic_published_config(model, **overrides) -> dict:
    c = model.config
    return {"model_type": "nomic_bert", "architectures": ["NomicBertModel"], "vocab_size": c.vocab_size,
            "n_embd": c.hidden_size, "n_head": c.num_attention_heads, "n_layer": c.num_hidden_layers,
            "n_inner": c.intermediate_size, "n_positions": 8192, "max_trained_positions": 2048,
            "activation_function": "swiglu", "rotary_emb_fraction": 1.0,
            "rotary_emb_base": c.rope_parameters["rope_theta"], "rotary_emb_interleaved": False,
            "rotary_emb_scale_base": None, "rotary_scaling_factor": None,
            "layer_norm_epsilon": c.layer_norm_eps, "qkv_proj_bias": False, "mlp_fc1_bias": False,
            "mlp_fc2_bias": False, "prenorm": False, "type_vocab_size": c.type_vocab_size, **overrides}


def gte_published_config(model, **overrides) -> dict:
    c = model.config
    return {"model_type": "new", "architectures": ["NewModel"], "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size, "num_attention_heads": c.num_attention_heads,
            "num_hidden_layers": c.num_hidden_layers, "intermediate_size": c.intermediate_size, "hidden_act": "gelu",
            "layer_norm_eps": c.layer_norm_eps, "max_position_embeddings": c.max_position_embeddings,
            "type_vocab_size": c.type_vocab_size, "rope_theta": c.rope_parameters["rope_theta"], "rope_scaling": None,
            "position_embedding_type": "rope", "layer_norm_type": "layer_norm", "pack_qkv": True,
            "logn_attention_scale": False, "logn_attention_clip1": False, "unpad_inputs": False, **overrides}


def republish(st_dir: Path, out: Path, config: dict, weights: dict) -> Path:
    """The sentence-transformers folder `st_dir` with this config.json and these weights instead."""
    from safetensors.torch import save_file

    shutil.copytree(st_dir, out)
    (out / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"))
    return out


def embed(path: Path, texts=TEXTS) -> np.ndarray:
    engine = EmbeddingEngine(str(path), batch_tokens=128)
    got = engine.embed(texts)
    engine.unload()
    return got


@pytest.mark.parametrize("kind, pooling, normalize, overrides", [
    ("nomic_bert", "mean", True, {}),
    ("nomic_bert", "cls", False, dict(hidden_act="gelu")),  # a GeGLU port
    ("gte", "cls", True, dict(type_vocab_size=2)),  # gte-large-en-v1.5 and the multilingual have a type table
    ("gte", "mean", False, dict(type_vocab_size=0)),  # gte-base-en-v1.5 has none
])
def test_port_matches_pytorch(tmp_path, minilm_path, kind, pooling, normalize, overrides):
    hf, _ = tiny_port(kind, minilm_path, tmp_path, **overrides)
    path = save_sentence_transformer(hf, tmp_path / "st", pooling, normalize, max_seq_length=64)
    expected, tokens = st_reference(path, TEXTS)
    engine = EmbeddingEngine(str(path), batch_tokens=128)  # several batches of padded, mixed lengths
    got = engine.embed(TEXTS)
    assert got.shape == expected.shape == (len(TEXTS), 64)
    assert not np.isnan(got).any()
    assert cosine(got, expected).min() >= 0.9999
    singles = np.concatenate([engine.embed([t]) for t in TEXTS[:4]])
    assert cosine(singles, got[:4]).min() >= 0.9999  # padding changes nothing
    assert engine.tokens_per_text(TEXTS) == tokens
    info = engine.info()
    assert (info["architecture"], info["pooling"], info["normalize"], info["dim"]) == (kind, pooling, normalize, 64)
    assert engine.max_length == 64
    engine.unload()


@pytest.mark.parametrize("kind", ["nomic_bert", "gte"])
def test_layers_run_in_one_native_call_on_real_tokens(tmp_path, minilm_path, monkeypatch, kind):
    """On the native CPU path both families run as BERT does: a batch's layers in one native call over its real
    tokens alone (rotations and gated feed-forward inside), with the reference's vectors."""
    hf, _ = tiny_port(kind, minilm_path, tmp_path)
    path = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    assert_one_call_on_real_tokens(path, TEXTS, monkeypatch)


@pytest.mark.parametrize("dtype", [pytest.param("int8", marks=needs_int8), pytest.param("float16", marks=needs_f16),
                                   pytest.param("bfloat16", marks=needs_bf16)])
@pytest.mark.parametrize("kind", ["nomic_bert", "gte"])
def test_port_in_packed_dtypes_stays_near_float32(tmp_path, minilm_path, kind, dtype):
    hf, _ = tiny_port(kind, minilm_path, tmp_path)
    assert_packed_near_float32(save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64),
                               TEXTS, dtype)


@pytest.mark.parametrize("layout", ["published", "port-names"])
def test_nomic_published_layout(tmp_path, minilm_path, layout):
    """nomic-embed-text-v1.5 as published: GPT-2 config names (n_embd, n_positions...), Wqkv/fc11/fc12/fc2 weights;
    or the port's config with its in-memory weight names. Both give the port's vectors."""
    hf, model = tiny_port("nomic_bert", minilm_path, tmp_path)
    st = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    state = model.state_dict()
    if layout == "published":
        path = republish(st, tmp_path / layout, nomic_published_config(model), published_nomic(state))
    else:
        path = republish(st, tmp_path / layout, json.loads((hf / "config.json").read_text()), state)
    assert cosine(embed(path), embed(st)).min() >= 0.99999


@pytest.mark.parametrize("layout", ["packed", "unpacked", "port-names"])
def test_gte_published_layout(tmp_path, minilm_path, layout):
    """gte-*-en-v1.5 as published (model_type "new", rope_theta, qkv_proj/up_gate_proj, or q/k/v_proj with
    pack_qkv false), or the port's config with its in-memory weight names: the port's vectors."""
    hf, model = tiny_port("gte", minilm_path, tmp_path, type_vocab_size=2)
    st = save_sentence_transformer(hf, tmp_path / "st", "cls", True, max_seq_length=64)
    state = model.state_dict()
    if layout == "port-names":
        path = republish(st, tmp_path / layout, json.loads((hf / "config.json").read_text()), state)
    else:
        packed = layout == "packed"
        path = republish(st, tmp_path / layout, gte_published_config(model, pack_qkv=packed),
                         published_gte(state, pack_qkv=packed))
    assert cosine(embed(path), embed(st)).min() >= 0.99999


def ntk_inv_freq(theta: float, d: int, factor: float, mixed_b: float | None):
    """Alibaba-NLP/new-impl's NTKScalingRotaryEmbedding, as its remote code computes it (torch, float32)."""
    import torch

    if mixed_b is None:
        inv_freq = 1.0 / ((theta * factor) ** (torch.arange(0, d, 2).float() / d))
        return inv_freq / factor ** (2 / d)
    a = torch.tensor(factor).log() / (d / 2) ** mixed_b
    lambda_1_m = (a * torch.arange(1, d // 2 + 1).float() ** mixed_b).exp()
    return 1.0 / (theta ** (torch.arange(0, d, 2).float() / d)) / lambda_1_m


@pytest.mark.parametrize("scaling", [{"type": "ntk", "factor": 2.0}, {"type": "ntk", "factor": 4.0, "mixed_b": 0.75}])
def test_gte_ntk_rope_scaling(tmp_path, minilm_path, scaling):
    """The published gte-v1.5 configs' `rope_scaling` (NTK), which transformers' port cannot build: against the port
    with the remote code's frequencies put in its rotary embedding."""
    import torch
    from sentence_transformers import SentenceTransformer

    hf, model = tiny_port("gte", minilm_path, tmp_path, type_vocab_size=2, rope_parameters={"rope_theta": 100.0})
    st_dir = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    path = republish(st_dir, tmp_path / "ntk", gte_published_config(model, rope_scaling=scaling),
                     published_gte(model.state_dict()))
    st = SentenceTransformer(str(st_dir), device="cpu")
    rotary = st[0].auto_model.rotary_emb
    with torch.no_grad():
        rotary.inv_freq.copy_(ntk_inv_freq(100.0, 16, scaling["factor"], scaling.get("mixed_b")))
    expected = st.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    got = embed(path)
    assert cosine(got, expected).min() >= 0.9999
    assert cosine(got, embed(st_dir)).min() < 0.999  # the scaling changed something


@pytest.mark.parametrize("clip1", [False, True])
def test_gte_logn_attention_scale(tmp_path, minilm_path, clip1):
    """`logn_attention_scale`: each text's queries times log(its tokens) / log(max_position_embeddings) (at least
    1 with clip1), in a padded batch; against the port with q_proj scaled by that, one text at a time."""
    import torch
    from sentence_transformers import SentenceTransformer

    hf, model = tiny_port("gte", minilm_path, tmp_path, type_vocab_size=2, max_position_embeddings=512)
    st_dir = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    path = republish(st_dir, tmp_path / "logn", gte_published_config(
        model, logn_attention_scale=True, logn_attention_clip1=clip1), published_gte(model.state_dict()))
    st = SentenceTransformer(str(st_dir), device="cpu")
    tokens = st.preprocess(TEXTS)["attention_mask"].sum(1).tolist()
    projections = [layer.self_attn.q_proj for layer in st[0].auto_model.layers]
    originals = [(p.weight.clone(), p.bias.clone()) for p in projections]
    expected = []
    for text, n in zip(TEXTS, tokens):
        scale = max(math.log(n) / math.log(512), 1.0) if clip1 else math.log(n) / math.log(512)
        with torch.no_grad():
            for p, (w, b) in zip(projections, originals):
                p.weight.copy_(w * scale)
                p.bias.copy_(b * scale)
        expected.append(st.encode([text], convert_to_numpy=True)[0])
    assert cosine(embed(path), np.stack(expected)).min() >= 0.9999


def test_nomic_interleaved_rotary(tmp_path, minilm_path):
    """`rotary_emb_interleaved` rotates pairs (2i, 2i+1) instead of (i, i + d/2): with the query and key rows of
    each head put in that order, an interleaved model gives the rotate-half model's vectors."""
    hf, model = tiny_port("nomic_bert", minilm_path, tmp_path)
    st = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    weights = published_nomic(model.state_dict())
    d, heads = 16, 4
    order = np.stack([np.arange(d // 2), np.arange(d // 2) + d // 2], axis=1).reshape(-1)  # 0, 8, 1, 9, ...
    rows = np.concatenate([h * d + order for h in range(2 * heads)] + [np.arange(2 * heads * d, 3 * heads * d)])
    for n in range(2):
        key = f"encoder.layers.{n}.attn.Wqkv.weight"
        weights[key] = weights[key][rows]
    path = republish(st, tmp_path / "interleaved", nomic_published_config(model, rotary_emb_interleaved=True), weights)
    assert cosine(embed(path), embed(st)).min() >= 0.99999


def test_nomic_dynamic_ntk(tmp_path, minilm_path):
    """`rotary_scaling_factor` (nomic's dynamic NTK): past max_trained_positions, the remote code's base
    base * (factor * L / trained - (factor - 1)) ** (d / (d - 2)) for a batch of length L; below, the base as is."""
    hf, model = tiny_port("nomic_bert", minilm_path, tmp_path)
    st = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    weights = published_nomic(model.state_dict())
    scaled = republish(st, tmp_path / "scaled", nomic_published_config(
        model, rotary_scaling_factor=2.0, max_trained_positions=16), weights)
    engine = EmbeddingEngine(str(scaled))
    for i, (text, n) in enumerate(zip(TEXTS, engine.tokens_per_text(TEXTS))):
        base = 1000.0 * ((2.0 * n / 16 - 1.0) ** (16 / 14) if n > 16 else 1.0)
        plain = republish(st, tmp_path / f"base-{i}", nomic_published_config(model, rotary_emb_base=base), weights)
        assert cosine(engine.embed([text]), embed(plain, [text])).min() >= 0.99999, n
    engine.unload()


def test_max_length_from_n_positions(tmp_path, minilm_path):
    """The published NomicBERT config names its position table n_positions: embed's limit, as transformers' GPT-2
    style config maps it; a bare checkpoint (no sentence-transformers files) takes the tokenizer's limit under it."""
    hf, model = tiny_port("nomic_bert", minilm_path, tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(hf, bare)
    (bare / "config.json").write_text(json.dumps(nomic_published_config(model, n_positions=100)))
    settings = json.loads((bare / "tokenizer_config.json").read_text())
    (bare / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 1_000_000_000}))
    engine = EmbeddingEngine(str(bare))
    assert engine.max_length == 100 and engine.dim == 64
    assert engine.tokens_per_text(["word " * 500]) == [100]
    engine.unload()
