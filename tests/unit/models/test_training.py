"""Training: config validation, the video-level split, a tiny end-to-end run through the real
synth -> decode -> train -> checkpoint -> load_model path, and proof that training learns: on a
small hand-made set every family's loss falls and its held-out accuracy beats chance by a wide
margin, and two Ray Train (DDP) ranks run, stay in step and end with identical weights."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vidbatch.errors import ConfigError
from vidbatch.media import synth
from vidbatch.models import load_model, read_metadata
from vidbatch.models.registry import get_model_spec
from vidbatch.specs import ClipSpec
from vidbatch.training.train import (
    ClipSet,
    DataConfig,
    LoopConfig,
    TrainConfig,
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


def test_bad_yaml_names_its_line_and_column(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: motion-cnn\ndata: [a, b\ntrain: {}\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3:6: not valid YAML") and "\n" not in message
    assert "flow sequence at 2:7" in message


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
    assert meta.metrics["epochs"] == 2 and meta.metrics["heldout_videos"] >= 1
    model = load_model("motion-transformer", result.output, device="cpu")
    assert model.version == result.version
    # Two epochs on 8 classes learn little; what is checked here is that the recorded held-out
    # figures are what the written checkpoint does on the held-out videos' clips.
    held = split_videos(clip_set.video_targets, 0.25, seed=0)[clip_set.videos]
    probs = model.predict(clip_set.clips[held])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    pred, truth = probs.argmax(axis=1), clip_set.targets[held]
    assert meta.metrics["heldout_clips"] == int(held.sum())
    assert meta.metrics["heldout_accuracy"] == pytest.approx(float((pred == truth).mean()))
    for i, label in enumerate(meta.labels):
        recall = meta.metrics["per_class_recall"][label]
        if (truth == i).any():
            assert recall == pytest.approx(float((pred[truth == i] == i).mean())), label
        else:
            assert recall is None, label


# ------------------------------------------------------------------ does training learn?

QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")
PER_CLASS = 32  # clips per class, each its own "video"
HOLDOUT = 0.25  # -> 8 held-out clips per class, 32 in all, balanced
CHANCE = 1 / len(QUADRANTS)
# A model that ignores its input predicts one class for all, or guesses: on a balanced held-out
# set it scores 0.25, or Binomial(32, 0.25) / 32. ACCURACY_BAR (chance + 0.5) is reached by
# guessing with probability ~1e-8 (checked below); a trained model reaches 1.0 here.
ACCURACY_BAR = 0.75
# Cross-entropy of a model that has learned nothing (uniform output) is ln 4 = 1.386 whatever
# the label smoothing; the floor with smoothing 0.05 is 0.20. Trained, the last epoch's
# mean loss is about 0.22; a model that never updates stays near 1.3-1.4.
LOSS_BAR = 0.5 * math.log(len(QUADRANTS))
ARCH = {
    "motion-cnn": {"width": 8, "dim": 32, "keypoints": 4},
    "motion-rnn": {"width": 8, "dim": 32, "keypoints": 4, "hidden": 32},
    "motion-transformer": {"width": 8, "dim": 32, "keypoints": 4, "heads": 2, "depth": 1},
}


def quadrant_clips(per_class: int, seed: int, frames: int = 4, size: int = 32) -> ClipSet:
    """Clips of a flat square in one quadrant (the label) on a random noisy background, at a
    random place inside the quadrant and in a colour far from the background's."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(len(QUADRANTS)), per_class)
    clips = np.empty((len(targets), frames, size, size, 3), np.uint8)
    half, side = size // 2, size // 4
    for i, quadrant in enumerate(targets):
        base = rng.uniform(40, 215, 3)
        image = base + rng.normal(0, 8, (frames, size, size, 3))
        colour = np.clip(base + rng.choice([-1, 1], 3) * 90, 0, 255)
        top = (quadrant // 2) * half + int(rng.integers(1, half - side - 1))
        left = (quadrant % 2) * half + int(rng.integers(1, half - side - 1))
        image[:, top : top + side, left : left + side] = colour
        clips[i] = np.clip(image, 0, 255).astype(np.uint8)
    return ClipSet(
        clips=clips,
        targets=targets,
        videos=np.arange(len(targets)),
        uris=[f"synthetic://{i}" for i in range(len(targets))],
        video_targets=targets,
        labels=QUADRANTS,
        clip=ClipSpec(frames, 4.0, size),
    )


def quadrant_config(tmp_path, model: str, **loop) -> TrainConfig:
    return TrainConfig(
        model=model,
        data=DataConfig(manifest="synthetic", holdout_fraction=HOLDOUT),
        output=str(tmp_path / f"{model}.safetensors"),
        clip=ClipSpec(4, 4.0, 32),
        arch=ARCH[model],
        train=LoopConfig(**{"epochs": 6, "batch_size": 16, "lr": 1e-2, **loop}),
    )


def binomial_tail(n: int, p: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_the_accuracy_bar_is_far_above_chance():
    held = round(PER_CLASS * HOLDOUT) * len(QUADRANTS)
    assert held == 32
    assert binomial_tail(held, CHANCE, math.ceil(ACCURACY_BAR * held)) < 1e-6


@pytest.mark.parametrize("model", sorted(ARCH))
def test_training_learns_beyond_chance(tmp_path, model):
    """Loss falls well below that of a model that learned nothing, the optimizer applied every
    update, and held-out accuracy beats chance (0.25) by a margin no guesser reaches."""
    assert get_model_spec(model).task == "classify"
    clip_set = quadrant_clips(PER_CLASS, seed=0)
    result = train(quadrant_config(tmp_path, model), clip_set=clip_set, log=lambda _: None)
    losses = [record["loss"] for record in result.history]
    assert len(losses) == 6
    assert losses[-1] < losses[0] and losses[-1] < LOSS_BAR, losses
    # 96 training clips, batches of 16: 6 updates per epoch, 36 in all.
    assert [record["steps"] for record in result.history] == [6, 12, 18, 24, 30, 36]
    # Independently of the recorded metrics: the written checkpoint on the held-out clips.
    held = split_videos(clip_set.video_targets, HOLDOUT, seed=0)[clip_set.videos]
    assert held.sum() == 32 and np.bincount(clip_set.targets[held]).tolist() == [8, 8, 8, 8]
    classifier = load_model(model, result.output, device="cpu")
    pred = classifier.predict(clip_set.clips[held]).argmax(axis=1)
    accuracy = float((pred == clip_set.targets[held]).mean())
    assert accuracy >= ACCURACY_BAR, (accuracy, losses)
    assert result.metrics["heldout_accuracy"] == pytest.approx(accuracy)


def test_two_workers_train_with_ray_train_ddp(tmp_path, ray_session):
    """train.workers: 2 runs TorchTrainer (DDP over gloo): two ranks in two processes, each on
    its own shard and augmentation draws (so their losses differ), apply the same number of
    updates and end with identical weights, which are the checkpoint's; the loss falls on both.
    Without DDP's gradient averaging the ranks' weights would part after the first update."""
    clip_set = quadrant_clips(PER_CLASS, seed=0)
    config = quadrant_config(tmp_path, "motion-rnn", workers=2, batch_size=8)
    lines: list[str] = []
    result = train(config, clip_set=clip_set, log=lines.append)
    assert any(line.startswith("epoch 6:") for line in lines), lines

    ranks = sorted(result.ranks, key=lambda r: r.rank)
    assert [(r.rank, r.world) for r in ranks] == [(0, 2), (1, 2)]
    assert len({r.pid for r in ranks} | {os.getpid()}) == 3  # two workers, neither is the driver
    # 96 training clips over 2 ranks = 48 each, batches of 8: 6 updates per epoch, 36 in all.
    assert [r.steps for r in ranks] == [36, 36]
    first, second = ranks
    assert first.losses != second.losses  # not one rank's report counted twice
    for rank in ranks:
        assert len(rank.losses) == 6
        assert rank.losses[-1] < rank.losses[0] and rank.losses[-1] < LOSS_BAR, rank.losses
    assert [r["loss"] for r in result.history] == pytest.approx(first.losses)

    # Identical weights: every parameter bit for bit. BatchNorm's running statistics are
    # buffers DDP broadcasts from rank 0 before each forward, so after the last forward each
    # rank holds those of its own last batch; only their update count must agree.
    assert first.state.keys() == second.state.keys()
    torch.manual_seed(config.train.seed)  # as `train` does: the same initial weights
    module = get_model_spec("motion-rnn").builder(
        num_classes=len(QUADRANTS), clip=config.clip, **config.arch
    )
    parameters = [name for name, _ in module.named_parameters()]
    assert parameters and set(parameters) <= first.state.keys()
    different = [n for n in parameters if not torch.equal(first.state[n], second.state[n])]
    assert not different, f"ranks ended with different weights: {different[:5]}"
    tracked = [n for n in first.state if n.endswith("num_batches_tracked")]
    assert tracked and all(torch.equal(first.state[n], second.state[n]) for n in tracked)
    # ... and moved away from where they started
    initial = dict(module.named_parameters())
    assert any(not torch.equal(initial[n].detach(), first.state[n]) for n in parameters)

    saved = load_file(result.output)
    assert saved.keys() == first.state.keys()
    assert all(torch.equal(saved[n], first.state[n]) for n in saved)
    meta = read_metadata(result.output)
    assert meta.family == "rnn" and meta.metrics["optimizer"]["workers"] == 2
    held = split_videos(clip_set.video_targets, HOLDOUT, seed=0)[clip_set.videos]
    pred = load_model("motion-rnn", result.output, device="cpu").predict(clip_set.clips[held])
    assert float((pred.argmax(axis=1) == clip_set.targets[held]).mean()) >= ACCURACY_BAR
