"""The registry, parametrised over every registered model: a new model is tested for free."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidbatch.cli import main
from vidbatch.models import (
    Classifier,
    describe_model,
    get_model,
    get_model_spec,
    list_models,
    load_model,
    register_model,
)
from vidbatch.models.common import KINETICS_MEAN, KINETICS_STD, param_count
from vidbatch.models.registry import FAMILIES, TASKS
from vidbatch.specs import ClipSpec

CLIP = ClipSpec(frames=8, fps=8.0, size=32)
SPECS = list_models(task="classify")
# vidbatch's own trainable families; the zoo and custom families need their native input sizes
# and weigh 10-100 MB, so tests/models/test_zoo_and_custom.py covers them.
OWN = [s for s in SPECS if s.family in ("cnn", "rnn", "transformer")]


def test_builtin_models_are_registered():
    assert {s.name for s in SPECS} >= {"motion-cnn", "motion-rnn", "motion-transformer"}
    assert {s.family for s in SPECS} >= {"cnn", "rnn", "transformer"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec_is_well_formed(spec):
    assert spec.family in FAMILIES and spec.task in TASKS
    assert get_model_spec(spec.name) is spec
    assert spec.summary
    assert "num_classes" not in spec.arch_defaults()


@pytest.mark.parametrize("spec", OWN, ids=lambda s: s.name)
def test_builds_and_forward_shape(spec):
    torch.manual_seed(0)
    module = get_model(spec.name, num_classes=5, clip=CLIP).eval()
    assert param_count(module) * 4 < 1.5e6, "keep each model under ~1.5 MB of fp32 weights"
    with torch.inference_mode():
        logits = module(torch.randn(2, CLIP.frames, 3, CLIP.size, CLIP.size))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("spec", OWN, ids=lambda s: s.name)
def test_predict_returns_probabilities(spec):
    module = get_model(spec.name, num_classes=4, clip=CLIP)
    model = Classifier(
        name=spec.name,
        family=spec.family,
        module=module,
        version="0" * 12,
        labels=["a", "b", "c", "d"],
        clip=CLIP,
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        device="cpu",
        batch_size=3,  # exercises batching: 5 clips -> 3 + 2
    )
    clips = np.random.default_rng(0).integers(0, 256, (5, 8, 32, 32, 3), dtype=np.uint8)
    probs = model.predict(clips)
    assert probs.shape == (5, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.predict(clips[:2]), probs[:2], rtol=1e-4, atol=1e-6)
    assert model.predict(clips[:0]).shape == (0, 4)
    with pytest.raises(ValueError, match="expects uint8 clips"):
        model.predict(clips.astype(np.float32))
    with pytest.raises(ValueError, match="expects uint8 clips"):
        model.predict(clips[:, :4])


def test_unknown_model_is_one_line_suggesting_the_closest_name():
    with pytest.raises(ValueError) as info:
        get_model_spec("motion-lstm")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown model 'motion-lstm'; did you mean 'motion-rnn'?")
    assert "motion-cnn" not in message  # a suggestion, not the whole list
    with pytest.raises(ValueError) as info:
        get_model_spec("zzzz")
    assert "did you mean" not in str(info.value) and "vidbatch models" in str(info.value)
    with pytest.raises(ValueError, match="did you mean 'transnetv2'"):
        load_model("transnet-v2")


def test_unknown_arch_arg_is_rejected():
    with pytest.raises(ValueError, match="has no arch arg 'depthh'"):
        get_model("motion-transformer", num_classes=3, clip=CLIP, depthh=3)


def test_register_rejects_duplicates_and_unknown_family():
    with pytest.raises(ValueError, match="already registered"):
        register_model("motion-cnn", family="cnn", task="classify")(lambda **_: None)
    with pytest.raises(ValueError, match="unknown family"):
        register_model("x", family="tensorflow", task="classify")


@pytest.mark.parametrize(
    "name, arch",
    [
        ("motion-rnn", {"cell": "lstm", "pool": "mean", "background": "clip-mean"}),
        ("motion-transformer", {"positional": "sinusoidal", "pool": "mean", "background": "none"}),
        ("motion-cnn", {"keypoints": 4, "width": 16}),
    ],
)
def test_arch_variants_build(name, arch):
    module = get_model(name, num_classes=3, clip=CLIP, **arch).eval()
    with torch.inference_mode():
        assert module(torch.randn(1, CLIP.frames, 3, 32, 32)).shape == (1, 3)


def test_temporal_models_see_time_order_and_cnn_does_not():
    """Reversing the frames leaves the CNN's output unchanged (mean pooling) but not the
    temporal models' - the property the shipped checkpoints rely on."""
    x = torch.randn(2, CLIP.frames, 3, 32, 32)
    reversed_x = x.flip(1)
    for name, blind in [("motion-cnn", True), ("motion-rnn", False), ("motion-transformer", False)]:
        torch.manual_seed(0)
        module = get_model(name, num_classes=3, clip=CLIP).eval()
        with torch.inference_mode():
            same = torch.allclose(module(x), module(reversed_x), atol=1e-5)
        assert same is blind, name


ALL = list_models()
# Loading builds the module: only the shipped models and one small zoo model of each task.
CHEAP = [s for s in ALL if s.weights_shipped] + [
    get_model_spec("r3d_18"),
    get_model_spec("ssdlite320_mobilenet_v3_large"),
]


def _weights(spec):
    return None if spec.default_weights else "random"


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_every_model_is_described_without_building_it(spec):
    info = describe_model(spec.name, _weights(spec))
    assert (info.name, info.family, info.task) == (spec.name, spec.family, spec.task)
    assert info.version and "?" not in info.input
    assert info.weights_shipped == spec.weights_shipped
    assert (info.clip is not None) == (spec.task == "classify")
    assert (info.shot is not None) == (spec.task == "shots")
    if spec.task != "shots":
        assert info.labels


@pytest.mark.parametrize("spec", CHEAP, ids=lambda s: s.name)
def test_description_matches_the_loaded_model(spec):
    info = describe_model(spec.name, _weights(spec))
    model = load_model(spec.name, _weights(spec), device="cpu")
    assert (model.task, model.family, model.version) == (info.task, info.family, info.version)
    assert tuple(model.labels) == info.labels
    own = {"classify": "clip", "detect": "frame", "shots": "spec"}[model.task]
    described = {"classify": info.clip, "detect": info.frame, "shots": info.shot}[model.task]
    assert getattr(model, own) == described


def test_models_verb_lists_task_input_and_shipped_weights(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:5] == ["name", "family", "task", "input", "weights"]
    rows = {line.split()[0]: line for line in lines[1 : len(ALL) + 1]}
    assert set(rows) == {s.name for s in ALL}
    assert "shots" in rows["transnetv2"] and "every frame, 48x27" in rows["transnetv2"]
    assert "shipped" in rows["transnetv2"] and "shipped" in rows["motion-rnn"]
    assert "resize 128x171, centre 112" in rows["r3d_18"] and "by name or file" in rows["r3d_18"]
    # Aligned: every column starts where its header does.
    start = lines[0].index("task")
    assert all(row[start:].startswith(("classify", "detect", "shots")) for row in rows.values())
