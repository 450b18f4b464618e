"""The checkpoints shipped in vidbatch/assets/: present, small, loadable, with their metrics."""

from __future__ import annotations

import os

import numpy as np
import pytest

from vidbatch.models import list_models, load_model, read_metadata

SHIPPED = [
    s
    for s in list_models(task="classify")
    if s.default_weights and s.default_weights.endswith(".safetensors")
]


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda s: s.name)
def test_shipped_checkpoint_loads_with_metadata(spec):
    assert os.path.exists(spec.default_weights), f"missing shipped weights {spec.default_weights}"
    assert os.path.getsize(spec.default_weights) < 5_000_000
    meta = read_metadata(spec.default_weights)
    assert (meta.name, meta.family, meta.task) == (spec.name, spec.family, spec.task)
    metrics = meta.metrics
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0
    assert set(metrics["per_class_recall"]) == set(meta.labels)
    assert metrics["heldout_videos"] > 0 and metrics["epochs"] > 0
    model = load_model(spec.name, device="cpu")
    assert model.version == load_model(spec.name, device="cpu").version  # stable
    clips = np.random.default_rng(0).integers(
        0, 256, (2, model.clip.frames, model.clip.size, model.clip.size, 3), dtype=np.uint8
    )
    probs = model.predict(clips)
    assert probs.shape == (2, len(model.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
