"""The registry, parametrised over every registered model: a new model is tested for free."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidbatch.models import (
    Classifier,
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
