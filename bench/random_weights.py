"""A copy of a sentence-transformers model folder with random weights of the same shapes, for timing.

    python3 bench/random_weights.py SOURCE_DIR OUT_DIR [--no-weights]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-weights", action="store_true", help="copy the small files only")
    args = parser.parse_args()
    copy_without_weights(args.source, args.out)
    if not args.no_weights:
        write_random_weights(args.out)


if __name__ == "__main__":
    main()
