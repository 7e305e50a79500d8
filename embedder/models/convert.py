"""`embed convert`: any supported model (Hub id, folder or .gguf) to an MLX checkpoint, quantized if asked,
in mlx-community's layout: model.safetensors, config.json with "quantization", tokenizer, sentence-transformers files."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import InputError, ModelError
from ..hub import resolve_model_path
from .loading import BFLOAT16_ONLY, DTYPES, build_model, load_config

BITS = (2, 3, 4, 5, 6, 8)  # what MLX's affine quantization packs
# Weights in formats other than ours: never copied beside the converted ones.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf", ".h5", ".msgpack", ".ot")


@dataclass(frozen=True)
class ConvertOptions:
    model: str
    output: Path
    quantize: int | None = None  # bits
    group_size: int | None = None  # None: 32 up to 4 bits, else 64
    dtype: str | None = None  # None: float16 (bfloat16 for Gemma) when quantizing, else the checkpoint's own


def default_group_size(bits: int) -> int:
    """At 4 bits, groups of 64 cost all-MiniLM-L6-v2 ~0.05 cosine on short texts; 32 halves that."""
    return 32 if bits <= 4 else 64


def default_dtype(config: dict, quantize: int | None) -> str:
    """Quantized checkpoints keep scales and the unquantized layers in 16 bits, as mlx-community's do."""
    if quantize is None:
        name = config.get("dtype") or config.get("torch_dtype") or "float32"
        return name if name in DTYPES else "float32"
    return "bfloat16" if config.get("model_type") in BFLOAT16_ONLY else "float16"


def side_files(src: Path) -> list[Path]:
    """Tokenizer, configs and sentence-transformers module folders; no weights of other formats."""
    modules = src / "modules.json"
    module_dirs = {m.get("path") for m in json.loads(modules.read_text(encoding="utf-8"))} if modules.exists() else set()
    return [
        p for p in sorted(src.iterdir())
        if (p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES) and p.name != "model.safetensors.index.json")
        or (p.is_dir() and p.name in module_dirs)
    ]


def convert(options: ConvertOptions) -> Path:
    """Load through the normal chain (so what is written is what embed runs), quantize, save, rename into place."""
    if options.quantize is not None and options.quantize not in BITS:
        raise InputError(f"--quantize takes one of {', '.join(map(str, BITS))} bits, not {options.quantize}")
    if options.dtype is not None and options.dtype not in DTYPES:
        raise InputError(f"unsupported dtype {options.dtype!r}; use one of {', '.join(DTYPES)}")
    out = Path(options.output)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose another output folder")
    src = resolve_model_path(options.model)
    if src.suffix == ".gguf":
        from .gguf import cached_checkpoint

        src = cached_checkpoint(src)
    config = load_config(src)
    if options.quantize is not None and config.get("quantization"):
        raise ModelError(f"{options.model} is already quantized ({config['quantization'].get('bits')} bits)")
    dtype = options.dtype or default_dtype(config, options.quantize)
    model = build_model(config, src, DTYPES[dtype])
    if options.quantize is not None:
        size = options.group_size or default_group_size(options.quantize)
        nn.quantize(model, group_size=size, bits=options.quantize,
                    class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % size == 0)
        config["quantization"] = {"group_size": size, "bits": options.quantize, "mode": "affine"}
        config["quantization_config"] = config["quantization"]  # the name mlx-lm and transformers also read
    config["dtype"] = dtype

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for p in side_files(src):
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, partial / p.name)
    mx.save_safetensors(str(partial / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    (partial / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return out
