from __future__ import annotations

import numpy as np
import pytest
import torch

from vidbatch.models import list_models, load_model
from vidbatch.models.video_zoo import NAMES, weights_meta

ZOO = [s.name for s in list_models(family="torchvision-video")]


def test_every_torchvision_video_classifier_is_registered_with_kinetics_metadata():
    assert sorted(ZOO) == sorted(NAMES)
    for name in ZOO:
        meta = weights_meta(name)
        assert len(meta["labels"]) == 400 and meta["clip"].size in (112, 224)


def test_zoo_model_needs_weights_or_random():
    with pytest.raises(ValueError, match="needs weights"):
        load_model("r3d_18")


def test_zoo_state_dict_round_trip_and_predict(tmp_path):
    random = load_model("r3d_18", "random", device="cpu")
    path = tmp_path / "r3d.pth"
    torch.save(random.module.model.state_dict(), path)
    loaded = load_model("r3d_18", str(path), device="cpu")
    assert loaded.version != "random" and loaded.labels == random.labels
    clips = np.random.default_rng(0).integers(0, 255, (2, 16, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.predict(clips), random.predict(clips), atol=1e-5)
    assert loaded.predict(clips).sum(axis=1) == pytest.approx([1, 1], abs=1e-4)


def test_zoo_refuses_a_pickle_payload(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, path)
    with pytest.raises(ValueError, match="evil.pth"):
        load_model("mc3_18", str(path), device="cpu")
    assert not marker.exists()


def test_custom_factory_model_loads_by_name():
    model = load_model("tests.support.custom_model:build", device="cpu")
    assert model.family == "custom" and model.labels == ["dark", "bright"]
    bright = np.full((1, 4, 32, 32, 3), 250, np.uint8)
    dark = np.full((1, 4, 32, 32, 3), 5, np.uint8)
    assert model.predict(bright).argmax() == 1 and model.predict(dark).argmax() == 0
    assert load_model("tests.support.custom_model:build").version == model.version  # stable


def test_custom_factory_errors_are_one_line():
    with pytest.raises(ValueError, match="cannot import factory"):
        load_model("tests.nowhere:build")
