"""A copy of a sentence-transformers model folder with random weights of the same shapes, for timing.

    python3 bench/random_weights.py SOURCE_DIR OUT_DIR [--no-weights]
    python3 bench/random_weights.py SOURCE_DIR OUT_DIR --mpnet-base
    python3 bench/random_weights.py SOURCE_DIR OUT_DIR --splade-base

`--mpnet-base` writes all-mpnet-base-v2's shape instead (MPNet, 768 wide, 12 layers of 12 heads, mean pooling,
normalized, 384 tokens), with SOURCE_DIR's tokenizer: its real weights are not on this machine, and speed depends
on the shapes alone. `--splade-base` writes naver/splade-v3's shape (BertForMaskedLM, 768 wide, 12 layers, the
30,522-entry vocabulary, 512 tokens) as sentence-transformers' SparseEncoder saves it (max-pooled SPLADE).

Where the real weights cannot travel (the NVIDIA device machine takes 64 MiB a call, the CUDA wheel most of it),
the tokenizer and config files go alone (`--no-weights` copies just those) and this script, run there, writes
`model.safetensors` from `transformers`' own initialisation: same shapes, same speed, and both systems load the
same file, so their vectors can still be compared.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx")


def copy_without_weights(source: Path, out: Path) -> None:
    shutil.copytree(source, out, dirs_exist_ok=True,
                    ignore=lambda _, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES) or n == "onnx"])


def write_random_weights(out: Path, seed: int = 0) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.from_pretrained(out))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))


def copy_tokenizer(source: Path, out: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)


def write_mpnet_base(source: Path, out: Path, seed: int = 0) -> None:
    """all-mpnet-base-v2's architecture and sentence-transformers modules, random weights, `source`'s tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(seed)
    hf = out.with_name(out.name + "-hf")
    MPNetModel(MPNetConfig(vocab_size=30527), add_pooling_layer=False).save_pretrained(str(hf))
    copy_tokenizer(source, hf)
    transformer = models.Transformer(str(hf), max_seq_length=384)
    modules = [transformer, models.Pooling(768, pooling_mode="mean"), models.Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(str(out), safe_serialization=True)
    shutil.rmtree(hf)


def write_splade_base(source: Path, out: Path, seed: int = 0) -> None:
    """naver/splade-v3's architecture as a SparseEncoder (MLMTransformer + SpladePooling), random weights,
    `source`'s tokenizer."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    hf = out.with_name(out.name + "-hf")
    BertForMaskedLM(BertConfig()).save_pretrained(str(hf))
    copy_tokenizer(source, hf)
    modules = [MLMTransformer(str(hf), max_seq_length=512), SpladePooling("max")]
    SparseEncoder(modules=modules, device="cpu").save(str(out))
    shutil.rmtree(hf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-weights", action="store_true", help="copy the small files only")
    parser.add_argument("--mpnet-base", action="store_true", help="all-mpnet-base-v2's shape, SOURCE's tokenizer")
    parser.add_argument("--splade-base", action="store_true", help="naver/splade-v3's shape, SOURCE's tokenizer")
    args = parser.parse_args()
    if args.mpnet_base or args.splade_base:
        (write_splade_base if args.splade_base else write_mpnet_base)(args.source, args.out)
        return
    copy_without_weights(args.source, args.out)
    if not args.no_weights:
        write_random_weights(args.out)


if __name__ == "__main__":
    main()
