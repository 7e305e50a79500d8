"""embed on a Ray cluster through Ray Data (the `ray` extra): `embed_dataset` for pipelines, `run_job` for
`embed --ray`."""

from embedder.ray.dataset import embed_dataset
from embedder.ray.job import run_job

__all__ = ["embed_dataset", "run_job"]
