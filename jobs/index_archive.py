"""Ray Job entrypoint for indexing: the same code path as `vidbatch run`.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/index_archive.py jobs/configs/nightly-s3.yaml [--set key=value ...]

Inside a Ray Job, RAY_ADDRESS is set, so the pipeline joins the cluster instead of starting one.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from the working dir

from vidbatch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
