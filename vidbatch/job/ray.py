"""The one adapter between vidbatch's stages and Ray: starting (or joining) Ray quietly,
sizing actor pools from what the cluster has, and turning stages into Ray Data calls."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vidbatch.config import Resources
from vidbatch.job.stages import Stage


def start_ray(*, verbose: bool = False) -> None:
    """Join the cluster RAY_ADDRESS names, or start a local Ray. Ray's own lines (object
    store notes, token auth, progress-bar hints) stay in Ray's log files unless `verbose`."""
    import ray

    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # core worker notes on stderr
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS"),
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.ERROR,
            include_dashboard=None if os.environ.get("RAY_ADDRESS") else False,
        )
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    context.verbose_stats_logs = False


@dataclass(frozen=True)
class Sizing:
    """How the job uses the cluster."""

    gpus_per_actor: float  # 0: inference on CPUs, fused with decoding
    inference_actors: int
    decode_actors: int
    cpus_per_worker: float  # CPUs each decode(+infer) worker asks Ray for
    model_batch_size: int | None  # inputs per forward pass; None: each model's default


def size_job(cluster: Mapping[str, float], resources: Resources, work: int) -> Sizing:
    """Actor counts, GPUs per actor and batch size from the cluster's resources (`auto`) or
    the config. `work` bounds the actors: never more than there are videos to index.

    Without GPUs, decoding and inference share one worker per CPU; the workers' logical CPUs
    leave room for one probe task (1 CPU) and one write task (1/4 CPU), or Ray could not
    schedule them while the workers hold every CPU. With GPUs, each GPU actor gets its own
    decode workers on the CPUs."""
    gpus = float(cluster.get("GPU", 0))
    cpus = max(1.0, float(cluster.get("CPU", 1)))
    if resources.gpus_per_actor == "auto":
        per_actor = 1.0 if gpus else 0.0
    else:
        per_actor = float(resources.gpus_per_actor)
    reserve = 1.25  # a probe task and a write task
    if per_actor:
        actors = (
            max(1, int(gpus // per_actor)) if resources.actors == "auto" else int(resources.actors)
        )
        decoders = max(1, int(cpus - reserve))
        per_worker = float(resources.decode_cpus)
    else:
        actors = max(1, int(cpus)) if resources.actors == "auto" else int(resources.actors)
        decoders = actors
        per_worker = max(0.1, min(float(resources.decode_cpus), (cpus - reserve) / actors))
    work = max(1, work)
    batch = None if resources.batch_size == "auto" else int(resources.batch_size)
    return Sizing(
        gpus_per_actor=per_actor,
        inference_actors=max(1, min(actors, work)),
        decode_actors=max(1, min(decoders, work)),
        cpus_per_worker=per_worker,
        model_batch_size=batch,
    )


class _StageWorker:
    """Ray Data's callable class around a stage: set up when the actor starts, torn down when
    Ray Data lets the actor go (it deletes the callable)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        stage.setup()

    def __call__(self, batch: Any) -> Any:
        return self.stage.process(batch)

    def __del__(self) -> None:
        self.stage.teardown()


def apply_stage(
    ds: Any,
    stage: Stage,
    *,
    actors: int | tuple[int, int] | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
) -> Any:
    """`ds.map_batches` for one stage: an actor pool of `actors` (setup once per actor) or, when
    None, stateless tasks (setup per call: only for stages whose setup is free)."""
    import ray.data

    options: dict[str, Any] = {
        "batch_size": stage.batch_size,
        "batch_format": stage.batch_format,
        "num_cpus": stage.num_cpus if num_cpus is None else num_cpus,
    }
    gpus = stage.num_gpus if num_gpus is None else num_gpus
    if gpus:
        options["num_gpus"] = gpus
    if actors is None:

        def run(batch: Any, stage: Stage = stage) -> Any:
            stage.setup()
            try:
                return stage.process(batch)
            finally:
                stage.teardown()

        return ds.map_batches(run, **options)
    size = actors if isinstance(actors, tuple) else (actors, actors)
    return ds.map_batches(
        _StageWorker,
        fn_constructor_args=(stage,),
        compute=ray.data.ActorPoolStrategy(min_size=size[0], max_size=size[1]),
        **options,
    )


def from_videos(videos: pa.Table, videos_per_block: int) -> Any:
    """A dataset of videos to index, a block of many videos each (Ray's overhead is per
    block: ~11 ms and ~14 KB of driver memory, measured)."""
    import ray.data

    step = max(1, videos_per_block)
    blocks = [videos.slice(i, step) for i in range(0, videos.num_rows, step)]
    return ray.data.from_arrow(blocks)


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())
