"""What every architecture module shares: config parsing that ignores keys it does not declare, checkpoint keys
renamed onto the module's, and the fusing of separate checkpoint projections into one."""

import inspect
from dataclasses import dataclass

import mlx.core as mx


@dataclass
class BaseModelArgs:
    @classmethod
    def from_dict(cls, params: dict):
        fields = inspect.signature(cls).parameters
        return cls(**{k: v for k, v in params.items() if k in fields})


def checkpoint_keys(weights: dict[str, mx.array], *, prefixes: dict[str, str], drop: tuple[str, ...] = (),
                    drop_suffixes: tuple[str, ...] = (), renames: tuple[tuple[str, str], ...] = ()
                    ) -> dict[str, mx.array]:
    """A checkpoint's keys as the module names them: each of `prefixes` replaced, in order, where a key starts with
    it (a task model's `bert.` stripped, a port's `layers.` moved under `encoder.`); keys starting with `drop` (task
    heads) or ending with `drop_suffixes` (buffers) left out; then every (old, new) of `renames` replaced."""
    out = {}
    for key, value in weights.items():
        for old, new in prefixes.items():
            if key.startswith(old):
                key = new + key[len(old):]
        if key.startswith(drop) or key.endswith(drop_suffixes):
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


def fuse(weights: dict[str, mx.array], n_layers: int, layer: str, groups: dict[str, tuple[str, ...]]
         ) -> dict[str, mx.array]:
    """Concatenate each group's projections (output rows, quantized ones too) into the one named by the key."""
    for i in range(n_layers):
        base = layer.format(i)
        for fused, parts in groups.items():
            for part in ("weight", "bias", "scales", "biases"):
                names = [f"{base}{p}.{part}" for p in parts]
                if all(n in weights for n in names):
                    weights[f"{base}{fused}.{part}"] = mx.concatenate([weights.pop(n) for n in names], axis=0)
    return weights
