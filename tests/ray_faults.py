"""A Ray worker setup hook for test_ray: the first actor call that embeds input file 1 kills its process, once
(a marker file says it happened), as a lost node or an OOM kill would."""

import os


def die_once_on_file_1() -> None:
    import embedder.ray.job as job

    marker = os.environ["EMBED_TEST_DIE_MARKER"]
    original = job.embed_file

    def embed_file(engine, file, *args, **kwargs):
        if file.number == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return original(engine, file, *args, **kwargs)

    job.embed_file = embed_file
