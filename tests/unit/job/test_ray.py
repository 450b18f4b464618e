"""Sizing the job from what the cluster has: `auto` actors, GPUs per actor and decode workers,
with fake cluster resource dicts (the GPU case runs for real under the `gpu` mark)."""

from __future__ import annotations

import pytest
import torch

from vidbatch.config import Resources
from vidbatch.job.ray import size_job


def test_cpu_only_fuses_decode_into_one_worker_per_cpu():
    sizing = size_job({"CPU": 16}, Resources(), work=1000)
    assert sizing.fused and sizing.inference_actors == 16 and sizing.gpus_per_actor == 0
    # The workers' logical CPUs leave a probe and a write task (1/4 CPU each) room.
    assert sizing.inference_actors * sizing.cpus_per_inference + 0.5 == pytest.approx(16)
    # ... on every node: four nodes of 4 CPUs keep half a CPU free each.
    spread = size_job({"CPU": 16}, Resources(), work=1000, nodes=4)
    assert spread.inference_actors * spread.cpus_per_inference + 4 * 0.5 == pytest.approx(16)
    # One probe task at a time per node: a second would take the write task's room.
    assert (sizing.probe_tasks, spread.probe_tasks) == (1, 4)


def test_gpus_get_one_inference_actor_each_and_decoders_on_the_cpus_left():
    sizing = size_job({"CPU": 16, "GPU": 2}, Resources(), work=1000)
    assert not sizing.fused
    assert (sizing.inference_actors, sizing.gpus_per_actor, sizing.cpus_per_inference) == (
        2,
        1.0,
        1.0,
    )
    assert sizing.decode_actors == 13  # 16 - 2 inference - 0.5 for probe and write, whole
    assert sizing.decode_actors * sizing.cpus_per_decoder + 2 + 0.5 <= 16


def test_explicit_resources_and_small_jobs():
    sizing = size_job({"CPU": 8, "GPU": 4}, Resources(gpus_per_actor=0.5, batch_size=7), work=1000)
    assert (sizing.inference_actors, sizing.gpus_per_actor, sizing.model_batch_size) == (8, 0.5, 7)
    split = size_job({"CPU": 3}, Resources(actors=1, decode_actors=2, decode_cpus=0.5), work=1000)
    assert not split.fused and (split.inference_actors, split.decode_actors) == (1, 2)
    assert split.cpus_per_decoder <= 0.5
    assert size_job({"CPU": 64}, Resources(), work=3).inference_actors == 3  # never idle workers


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_sizing_on_this_gpu_machine(ray_session):
    from vidbatch.job.ray import cluster_resources

    cluster = cluster_resources()
    sizing = size_job(cluster, Resources(), work=1000)
    assert not sizing.fused and sizing.gpus_per_actor == 1.0
    assert sizing.inference_actors == int(cluster["GPU"])
