"""The one adapter between vidbatch's stages and Ray: starting (or joining) Ray quietly,
sizing actor pools from what the cluster has, and turning stages into Ray Data calls."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vidbatch.config import Resources
from vidbatch.job.stages import ProbeStage, Stage, WriteStage


def start_ray(*, verbose: bool = False) -> None:
    """Join the cluster RAY_ADDRESS names, or start a local Ray. Ray's own lines (object
    store notes, token auth, progress-bar hints) stay in Ray's log files unless `verbose`."""
    import ray
    import ray.data  # configures its loggers on import: quiet them after that

    if not verbose:
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # The driver's core worker writes notes to stderr (e.g. ray-project/ray#53727 for every
        # Ray Data actor); at "fatal" it keeps them to Ray's log files. It announces the
        # setting itself on stderr while Ray starts: that line is dropped below.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if not ray.is_initialized():
        with contextlib.nullcontext() if verbose else _stderr_silenced():
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
    # Ray Data's per-operator reservations kept the write tasks from running until every video
    # was probed (4,000 videos on 2 CPUs: the first result came after 55 s of a 77 s job;
    # without them, and one probe task per node, after 14 s). The job's actor pools are
    # fixed in size, so the reservations have nothing to protect.
    context.op_resource_reservation_enabled = False


# Per node: room for a probe task and a write task beside the workers.
RESERVED_CPUS = ProbeStage.num_cpus + WriteStage.num_cpus
# Stateless stages (probe, write) wait on storage: spread them over the nodes, not the driver's.
TASK_PLACEMENT = {"scheduling_strategy": "SPREAD"}


@contextlib.contextmanager
def _stderr_silenced() -> Any:
    """File descriptor 2 to /dev/null for a moment (native code's writes included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass(frozen=True)
class Sizing:
    """How the job uses the cluster."""

    fused: bool  # decode inside the inference workers (CPU only)
    inference_actors: int
    gpus_per_actor: float
    cpus_per_inference: float  # logical CPUs each inference (or fused) worker asks for
    decode_actors: int  # separate decode workers, when not fused
    cpus_per_decoder: float
    model_batch_size: int | None  # inputs per forward pass; None: each model's default
    probe_tasks: int = 1  # at a time: one per node, beside one write task


def size_job(
    cluster: Mapping[str, float], resources: Resources, work: int, nodes: int = 1
) -> Sizing:
    """Worker counts, GPUs per actor and batch size from the cluster's resources (`auto`) or
    the config; never more workers than videos to index (`work`).

    Without GPUs (and without `decode_actors` set), decoding and inference share one worker
    per CPU. With GPUs, one inference actor per GPU, and decode workers on the CPUs left.
    The logical CPUs asked for leave room for a probe task and a write task (1/4 CPU each) on
    every node: Ray could not schedule them where the workers held every CPU."""
    gpus = float(cluster.get("GPU", 0))
    cpus = max(1.0, float(cluster.get("CPU", 1)))
    work, nodes = max(1, work), max(1, nodes)
    spare = max(0.25, cpus - RESERVED_CPUS * nodes)  # what the workers may ask for
    if resources.gpus_per_actor == "auto":
        per_gpu_actor = 1.0 if gpus else 0.0
    else:
        per_gpu_actor = float(resources.gpus_per_actor)
    batch = None if resources.batch_size == "auto" else int(resources.batch_size)
    if resources.actors != "auto":
        actors = int(resources.actors)
    elif per_gpu_actor:
        actors = max(1, int(gpus // per_gpu_actor))
    else:
        actors = max(1, int(cpus))
    actors = max(1, min(actors, work))
    fused = not per_gpu_actor and resources.decode_actors == "auto"
    if fused:
        return Sizing(True, actors, 0.0, spare / actors, 0, 0.0, batch, nodes)
    per_inference = 1.0 if per_gpu_actor else min(1.0, spare / (2 * actors))
    left = spare - per_inference * actors
    decoders = (
        max(1, int(left // float(resources.decode_cpus)))
        if resources.decode_actors == "auto"
        else int(resources.decode_actors)
    )
    decoders = max(1, min(decoders, work))
    per_decoder = min(float(resources.decode_cpus), max(0.1, left / decoders))
    return Sizing(False, actors, per_gpu_actor, per_inference, decoders, per_decoder, batch, nodes)


class _StageWorker:
    """Ray Data's callable class around a stage: set up when the actor starts, torn down when
    Ray Data lets the actor go (it deletes the callable). The stage rides on the class, not as
    a constructor argument: Ray keeps those in the object store and warns that an actor
    restart depends on them (ray-project/ray#53727)."""

    stage_template: Stage

    def __init__(self) -> None:
        self.stage = self.stage_template
        self.stage.setup()

    def __call__(self, batch: Any) -> Any:
        return self.stage.process(batch)

    def __del__(self) -> None:
        self.stage.teardown()


def apply_stage(
    ds: Any,
    stage: Stage,
    *,
    actors: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    tasks: int | None = None,
) -> Any:
    """`ds.map_batches` for one stage: an actor pool of `actors` (setup once per actor) or, when
    None, stateless tasks (setup per call: only for stages whose setup is free), at most
    `tasks` of them at a time when given."""
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

        run.__name__ = run.__qualname__ = type(stage).__name__  # Ray names the tasks after it
        if tasks:
            options["concurrency"] = tasks
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for a scheduling strategy yet, and warns on
            # every call that passes one the old way (pyproject keeps Ray below 2.64).
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return ds.map_batches(run, **options, **TASK_PLACEMENT)
    # A worker class per stage, so `ps` and Ray's dashboard name the stage a process runs.
    worker = type(
        type(stage).__name__, (_StageWorker,), {"__module__": __name__, "stage_template": stage}
    )
    return ds.map_batches(
        worker,
        compute=ray.data.ActorPoolStrategy(min_size=actors, max_size=actors),
        **options,
    )


def split_blocks(ds: Any, rows_per_block: int, num_cpus: float) -> Any:
    """`ds` in blocks of at most `rows_per_block` rows (streaming), so work units spread over
    the decode workers. Ray Data fuses the split into the stage before it when both ask for
    the same resources; its split asks for 1 CPU and offers no option, so the logical
    operator's resources are set here: a 1-CPU task could never be scheduled on nodes whose
    CPUs the decode workers hold."""
    ds = ds.repartition(target_num_rows_per_block=max(1, rows_per_block))
    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)
    if isinstance(getattr(op, "ray_remote_args", None), dict):
        op.ray_remote_args.update(num_cpus=num_cpus, **TASK_PLACEMENT)
    return ds


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


def cluster_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))
