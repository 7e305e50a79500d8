"""SigLIP (google/siglip-*): a text tower and an image tower whose vectors share one space, on mlx-embeddings' model
code (the `images` extra). Texts are padded to the text tower's full length, as SigLIP was trained and as its
processor pads them: the text vector is read at the last position, so the padding is part of the input."""

from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn

from ..errors import ModelError
from .base import BaseModelArgs


def _siglip_code():
    try:
        from mlx_embeddings.models import siglip
    except ImportError as e:
        raise ModelError("SigLIP models need mlx-embeddings and Pillow: pip install 'embed[images]'") from e
    return siglip


def _known(cls, values: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    text_config: dict
    vision_config: dict

    @property
    def image_size(self) -> int:
        return self.vision_config.get("image_size", 224)

    @property
    def patches(self) -> int:
        return (self.image_size // self.vision_config.get("patch_size", 16)) ** 2


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        siglip = _siglip_code()
        self.args = args
        self.length = args.text_config.get("max_position_embeddings", 64)
        self.pad_token_id = args.text_config.get("pad_token_id", 1)
        self.siglip = siglip.Model(siglip.ModelArgs(
            text_config=siglip.TextConfig(**_known(siglip.TextConfig, args.text_config)),
            vision_config=siglip.VisionConfig(**_known(siglip.VisionConfig, args.vision_config)),
            model_type=args.model_type))

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        """The text tower's vector (its head over the last position) at every position of (B, L, D), so the
        pooling the engine applies returns it; token types do not exist here."""
        B, L = input_ids.shape
        ids = mx.where(attention_mask != 0, input_ids, self.pad_token_id)
        ids = mx.concatenate([ids, mx.full((B, self.length - L), self.pad_token_id, ids.dtype)], axis=1)
        vectors = self.siglip.get_text_features(ids)
        return mx.broadcast_to(vectors[:, None, :], (B, L, vectors.shape[-1]))

    def embed_images(self, pixels: mx.array) -> mx.array:
        """(B, D) image vectors from (B, height, width, 3) preprocessed pixels."""
        return self.siglip.get_image_features(pixels)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        return {f"siglip.{k}": v for k, v in self.siglip.sanitize(weights).items()}
