"""Images as an image model's vision tower takes them: decoded with Pillow, resized, rescaled and normalized as the
model's preprocessor_config.json says (transformers' SigLIP image processor); no MLX here."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, ModelError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DATA_URI_PREFIX = "data:image/"


@dataclass(frozen=True)
class ImageProcessor:
    """preprocessor_config.json's steps: resize to (height, width) with `resample` (a Pillow filter number), multiply
    by `rescale`, then (x - mean) / std per channel."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255
    resample: int = 3  # bicubic, SigLIP's

    def pixels(self, data: bytes, where: str) -> np.ndarray:
        """(height, width, 3) float32, channels last as MLX's convolutions take them."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.mode != "RGB":  # transparency over white, as transformers' convert_to_rgb
                    rgba = image.convert("RGBA")
                    image = Image.new("RGBA", rgba.size, (255, 255, 255))
                    image.alpha_composite(rgba)
                image = image.convert("RGB").resize((self.width, self.height), resample=self.resample)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise InputError(f"{where}: not an image Pillow can read ({e})") from e
        values = np.asarray(image, np.float32) * np.float32(self.rescale)
        return (values - np.float32(self.mean)) / np.float32(self.std)


def read_image_processor(model_dir: Path, image_size: int) -> ImageProcessor:
    """The model's preprocessor_config.json; without one, SigLIP's own settings at the tower's image size."""
    path = model_dir / "preprocessor_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except ValueError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from e
    size = config.get("size") or {}
    return ImageProcessor(
        height=size.get("height", size.get("shortest_edge", image_size)),
        width=size.get("width", size.get("shortest_edge", image_size)),
        mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))) if config.get("do_normalize", True) else (0, 0, 0),
        std=tuple(config.get("image_std", (0.5, 0.5, 0.5))) if config.get("do_normalize", True) else (1, 1, 1),
        rescale=config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0,
        resample=config.get("resample", 3),
    )


@dataclass(frozen=True)
class ImageRow:
    """One preprocessed image in the engine's queue beside token rows; its length, the vision tower's patch count,
    is what it costs a batch."""

    pixels: np.ndarray
    patches: int

    def __len__(self) -> int:
        return self.patches


def is_image_path(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def decode_data_uri(uri: str, where: str) -> bytes:
    """The bytes of a `data:image/...;base64,...` URI (the only image URLs a server with no network can take)."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InputError(f"{where}: an image must be a data URI like 'data:image/png;base64,...'", "input")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{where}: the image's base64 is invalid ({e})", "input") from e
