"""Training: config validation, the video-level split, and a tiny end-to-end run through the
real synth -> decode -> train -> checkpoint -> load_model path."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from vidbatch.errors import ConfigError
from vidbatch.models import load_model, read_metadata
from vidbatch.specs import ClipSpec
from vidbatch.training.train import (
    LoopConfig,
    clip_starts,
    label_maps,
    load_clip_set,
    load_train_config,
    shuffle_channels,
    split_videos,
    train,
    transform_labeled,
)

BASE = {
    "model": "motion-rnn",
    "data": {"manifest": "labels.parquet"},
    "clip": {"frames": 16, "fps": 8, "size": 64},
    "arch": {"cell": "lstm"},
    "train": {"epochs": 2},
    "output": "out.safetensors",
}


def write(tmp_path, doc) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_load_config(tmp_path):
    config = load_train_config(write(tmp_path, BASE))
    assert config.model == "motion-rnn" and config.clip == ClipSpec(16, 8.0, 64)
    assert config.data.holdout_fraction == 0.2 and config.data.max_clips_per_video == 4
    assert (
        config.train.epochs == 2 and config.train.workers == 1 and config.arch == {"cell": "lstm"}
    )


@pytest.mark.parametrize(
    "doc, key",
    [
        ({**BASE, "epochs": 3}, "'epochs'"),
        ({**BASE, "data": {"manifest": "x", "holdout": 0.1}}, "'data.holdout'"),
        ({**BASE, "train": {"epoch": 3}}, "'train.epoch'"),
        ({**BASE, "arch": {"cells": "gru"}}, "'cells'"),
        ({**BASE, "model": "motion-lstm"}, "'motion-lstm'"),
        ({**BASE, "data": {"manifest": "x", "holdout_fraction": 1.5}}, "data.holdout_fraction"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(tmp_path, doc, key):
    with pytest.raises(ValueError) as info:
        load_train_config(write(tmp_path, doc))
    assert isinstance(info.value, ConfigError)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_clip_starts_follow_the_contract():
    clip = ClipSpec(16, 8.0, 64)  # 2 s clips
    assert clip_starts(1.5, clip, 4) == [0.0]  # shorter than a clip: still one
    assert clip_starts(6.0, clip, 4) == [0.0, 2.0, 4.0]
    assert clip_starts(19.9, clip, 4) == [0.0, 6.0, 10.0, 16.0]  # 9 possible, 4 spread out


def test_split_is_by_video_stratified_and_seeded():
    targets = np.repeat(np.arange(4), 10)
    held = split_videos(targets, 0.2, seed=0)
    assert held.sum() == 8
    assert all(held[targets == label].sum() == 2 for label in range(4))
    assert np.array_equal(held, split_videos(targets, 0.2, seed=0))
    assert not np.array_equal(held, split_videos(targets, 0.2, seed=1))


LABELS = ("left", "right", "still")


def test_label_maps_are_symmetric_and_checked():
    loop = LoopConfig(time_reversal={"left": "right", "still": "still"}, hflip={"left": "right"})
    maps = label_maps(loop, LABELS)
    assert maps["time_reversal"].tolist() == [1, 0, 2]
    assert maps["hflip"].tolist() == [1, 0, -1]  # "still" not listed: never flipped
    assert "vflip" not in maps
    with pytest.raises(ConfigError, match="train.hflip: 'up' is not one of the labels"):
        label_maps(LoopConfig(hflip={"left": "up"}), LABELS)
    with pytest.raises(ConfigError, match="maps to two labels"):
        label_maps(LoopConfig(time_reversal={"left": "right", "right": "still"}), LABELS)


def test_label_changing_transforms_change_the_label_with_the_clip():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (64, 4, 2, 2, 3), dtype=np.uint8)
    targets = rng.integers(0, 3, 64)
    maps = label_maps(LoopConfig(time_reversal={"left": "right"}), LABELS)
    out, out_targets = transform_labeled(clips, targets, maps, np.random.default_rng(1))
    reversed_ = (out != clips).reshape(64, -1).any(axis=1)
    assert 0 < reversed_.sum() < (targets != 2).sum()  # about half of the mappable clips
    assert not reversed_[targets == 2].any()  # "still" is not in the map
    assert np.array_equal(out[reversed_], clips[reversed_][:, ::-1])
    assert np.array_equal(out_targets[reversed_], 1 - targets[reversed_])
    assert np.array_equal(out_targets[~reversed_], targets[~reversed_])


def test_channel_shuffle_keeps_pixels():
    clips = np.random.default_rng(0).integers(0, 256, (3, 2, 4, 4, 3), dtype=np.uint8)
    shuffled = shuffle_channels(clips, np.random.default_rng(1))
    assert np.array_equal(np.sort(shuffled, axis=-1), np.sort(clips, axis=-1))


def test_tiny_end_to_end(tmp_path):
    synth = pytest.importorskip("vidbatch.media.synth")
    archive = synth.synthesize(tmp_path / "synth", 16, seed=3, min_seconds=1.0, max_seconds=2.5)
    doc = {
        "model": "motion-transformer",
        "data": {
            "manifest": archive.labels_uri,
            "holdout_fraction": 0.25,
            "max_clips_per_video": 2,
        },
        "clip": {"frames": 4, "fps": 4, "size": 32},
        "arch": {"width": 8, "dim": 16, "heads": 2, "depth": 1},
        "train": {"epochs": 2, "batch_size": 4},
        "output": str(tmp_path / "tiny.safetensors"),
    }
    config = load_train_config(write(tmp_path, doc))
    clip_set = load_clip_set(config.data, config.clip, log=lambda _: None)
    assert clip_set.clips.dtype == np.uint8 and clip_set.clips.shape[1:] == (4, 32, 32, 3)
    result = train(config, clip_set=clip_set, log=lambda _: None)
    meta = read_metadata(result.output)
    assert meta.family == "transformer" and meta.clip == ClipSpec(4, 4.0, 32)
    assert 0.0 <= meta.metrics["heldout_accuracy"] <= 1.0
    assert set(meta.metrics["per_class_recall"]) == set(meta.labels)
    assert meta.metrics["epochs"] == 2 and meta.metrics["heldout_videos"] >= 1
    model = load_model("motion-transformer", result.output, device="cpu")
    assert model.version == result.version
    probs = model.predict(clip_set.clips[:3])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_two_workers_train_with_ray_train_ddp(tmp_path, ray_session):
    """train.workers: 2 runs TorchTrainer (DDP over gloo): both ranks step together, rank 0's
    weights come back as the checkpoint, and the per-epoch history comes back with them."""
    synth = pytest.importorskip("vidbatch.media.synth")
    archive = synth.synthesize(tmp_path / "synth", 16, seed=5, min_seconds=1.0, max_seconds=2.5)
    doc = {
        "model": "motion-rnn",
        "data": {"manifest": archive.labels_uri, "holdout_fraction": 0.25, "max_clips_per_video": 2},
        "clip": {"frames": 4, "fps": 4, "size": 32},
        "arch": {"width": 8, "dim": 16, "hidden": 16},
        "train": {"epochs": 2, "batch_size": 4, "workers": 2},
        "output": str(tmp_path / "ddp.safetensors"),
    }
    config = load_train_config(write(tmp_path, doc))
    lines: list[str] = []
    result = train(config, log=lines.append)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all("loss" in r and "heldout_accuracy" in r for r in result.history)
    assert any(line.startswith("epoch 2:") for line in lines), lines
    meta = read_metadata(result.output)
    assert meta.family == "rnn" and meta.metrics["optimizer"]["workers"] == 2
    model = load_model("motion-rnn", result.output, device="cpu")
    clips = np.zeros((2, 4, 32, 32, 3), np.uint8)
    np.testing.assert_allclose(model.predict(clips).sum(axis=1), 1.0, rtol=1e-5)
