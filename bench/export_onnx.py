"""Export a sentence-transformers model folder's transformer to ONNX once, for the ONNX Runtime and OpenVINO peers.

    python bench/export_onnx.py MODEL_DIR [OUT]      (OUT defaults to MODEL_DIR/onnx/model.onnx)

It also writes OUT's int8 twin beside it (`model_qint8_avx512_vnni.onnx`), as sentence-transformers'
`export_dynamic_quantized_onnx_model(model, "avx512_vnni", ...)` makes it: ONNX Runtime's dynamic quantization,
int8 weights per output channel, activations quantized per tensor at run time (the `onnxruntime-int8` peer).

What optimum's exporter writes for the peers (`SentenceTransformer(backend="onnx")` loads the same file): inputs
input_ids, attention_mask (and token_type_ids where the model takes them), output last_hidden_state, batch and
sequence axes dynamic, float32. torch and transformers (the `oracle` extra) are needed here only.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path


def export(model_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir)).eval()
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in names)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}

    class Hidden(torch.nn.Module):  # a tensor out, not transformers' output object
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(Hidden(), example, str(out), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return out


def export_int8(onnx: Path) -> Path:
    """ONNX Runtime's dynamic int8 twin of `onnx`, with optimum's avx512_vnni settings (per channel, full range)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = onnx.with_name(f"{onnx.stem}_qint8_avx512_vnni.onnx")
    quantize_dynamic(str(onnx), str(out), per_channel=True, reduce_range=False, weight_type=QuantType.QInt8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    args = parser.parse_args()
    onnx = export(args.model_dir, args.out or args.model_dir / "onnx" / "model.onnx")
    print(onnx, export_int8(onnx), sep="\n")


if __name__ == "__main__":
    main()
