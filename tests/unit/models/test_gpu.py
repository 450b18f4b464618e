"""The CUDA paths, each against the CPU result: bfloat16 autocast in `Classifier.predict`, pinned
host-to-GPU copies in `clips_to_tensor`, float16 autocast in `Detector.detect`.

Marked `gpu`: skipped without CUDA, deselected in CI (-m "not gpu"); run them on a GPU machine
with `pytest -m gpu tests/unit/models/test_gpu.py`.

Tolerances. bfloat16 keeps 8 significant bits (rounding error 2^-9, 0.2% per operation) and
float16 keeps 11 (2^-12). Measured on CPU by running the shipped models under
`torch.autocast("cpu", dtype=torch.bfloat16)` against float32 on two synth sets: class
probabilities moved by at most 0.0021 (CNN), 0.0074 (RNN) and 0.034-0.14 (transformer, whose
attention softmax sharpens small logit changes; logits moved by at most 0.19), 0.001 on
average, and no top-1 label changed; synth-detector boxes kept IoU >= 0.95 and scores moved by
at most 0.004. The bars below leave room for CUDA's different kernels and reduction orders:
probabilities within 0.2 (mean 0.01), the same top-1 label wherever float32's top two are at
least 0.2 apart (a near tie may flip legitimately), detections matched at IoU >= 0.9 with
scores within 0.03 (float16 is 8x finer than bfloat16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vidbatch.media.decode import decode_clips, decode_samples
from vidbatch.media.synth import synthesize
from vidbatch.models import list_models, load_model
from vidbatch.models.common import KINETICS_MEAN, KINETICS_STD, clips_to_tensor
from vidbatch.specs import FrameSpec
from vidbatch.tools.evaluate import box_iou

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CLASSIFIERS = [
    s.name
    for s in list_models(task="classify")
    if s.default_weights and s.default_weights.endswith(".safetensors")
]
PROBABILITY_TOLERANCE, MEAN_TOLERANCE, CLEAR_MARGIN = 0.2, 0.01, 0.2
IOU_BAR, SCORE_TOLERANCE, DETECTION_SCORE = 0.9, 0.03, 0.5


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """16 synth videos, two per class, of the synth archive's several frame sizes."""
    made = synthesize(tmp_path_factory.mktemp("gpu"), 16, seed=5, min_seconds=2.0, max_seconds=3.0)
    return made.uris


def output_dtypes(module: nn.Module, kind: type[nn.Module]) -> tuple[list[torch.dtype], list]:
    """Record the output dtype of every `kind` layer while the returned handles are alive."""
    seen: list[torch.dtype] = []
    handles = [
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        for layer in module.modules()
        if isinstance(layer, kind)
    ]
    return seen, handles


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_amp_on_cuda_matches_cpu(name, archive):
    cpu = load_model(name, device="cpu")
    gpu = load_model(name, device="cuda")
    assert next(gpu.module.parameters()).is_cuda
    clips = np.concatenate([decode_clips(uri, [0.0], cpu.clip) for uri in archive])
    expected = cpu.predict(clips)

    seen, handles = output_dtypes(gpu.module, nn.Linear)
    try:
        got = gpu.predict(clips)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.bfloat16 in seen, f"no bfloat16 layer ran under autocast: {set(seen)}"

    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    difference = np.abs(got - expected)
    assert difference.max() <= PROBABILITY_TOLERANCE, difference.max()
    assert difference.mean() <= MEAN_TOLERANCE, difference.mean()
    top_two = np.sort(expected, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] >= CLEAR_MARGIN
    assert clear.any()  # the order-blind CNN is near a tie on most clips of the paired classes
    assert np.array_equal(got.argmax(axis=1)[clear], expected.argmax(axis=1)[clear])


def test_clips_reach_the_gpu_through_pinned_memory_intact():
    """Same values as on CPU (float32 elementwise ops; a scalar divide may be a multiply by the
    reciprocal on one device: two roundings of 1/2 ulp, scaled by 1/std <= 4.6, stay below
    1e-6), and the asynchronous copy does not depend on the caller's array after return."""
    clips = np.random.default_rng(0).integers(0, 256, (4, 8, 64, 64, 3), dtype=np.uint8)
    expected = clips_to_tensor(clips, KINETICS_MEAN, KINETICS_STD, device="cpu")
    source = clips.copy()
    got = clips_to_tensor(source, KINETICS_MEAN, KINETICS_STD, device="cuda")
    source[:] = 0  # reused by the caller at once, as a decode buffer would be
    torch.cuda.synchronize()
    assert got.is_cuda and got.dtype == torch.float32 and got.shape == expected.shape
    assert got.shape == (4, 8, 3, 64, 64)
    torch.testing.assert_close(got.cpu(), expected, rtol=0.0, atol=1e-6)


def test_host_to_gpu_copies_are_from_pinned_memory():
    """The profiler names each copy by its source memory: pinned, never pageable."""
    from torch.profiler import ProfilerActivity, profile

    clips = np.random.default_rng(1).integers(0, 256, (4, 8, 64, 64, 3), dtype=np.uint8)
    clips_to_tensor(clips, KINETICS_MEAN, KINETICS_STD, device="cuda")  # warm up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
        clips_to_tensor(clips, KINETICS_MEAN, KINETICS_STD, device="cuda")
        torch.cuda.synchronize()
    names = [event.name for event in trace.events()]
    assert any("pin_memory" in name for name in names), sorted(set(names))
    copies = [name for name in names if name.startswith("Memcpy HtoD")]
    assert copies, f"the profiler saw no host-to-device copy: {sorted(set(names))}"
    assert all("Pinned" in name for name in copies), copies


def test_detection_on_cuda_matches_cpu(archive):
    frames = [
        frame
        for uri in archive
        for frame in decode_samples(
            uri, frame_spec=FrameSpec(1, 320), frame_times=[0.5, 1.5]
        ).frames
    ]
    cpu = load_model("synth-detector", device="cpu")
    gpu = load_model("synth-detector", device="cuda")
    # The same batches on both: frames of several sizes are padded alike within a batch.
    cpu.batch_size = gpu.batch_size = 8
    expected = cpu.detect(frames, min_score=0.3, max_detections=20)

    seen, handles = output_dtypes(gpu.module.backbone, nn.Conv2d)
    try:
        got = gpu.detect(frames, min_score=0.3, max_detections=20)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.float16 in seen, f"no float16 convolution ran under autocast: {set(seen)}"

    confident = sum(int((s >= DETECTION_SCORE).sum()) for _, s, _ in expected)
    assert confident >= len(frames) // 2, "too few detections to compare"
    for one, other in ((expected, got), (got, expected)):
        for (boxes, scores, labels), (o_boxes, o_scores, o_labels) in zip(one, other, strict=True):
            for box, score, label in zip(boxes, scores, labels, strict=True):
                if score < DETECTION_SCORE:
                    continue
                matches = [
                    abs(float(score) - float(o_score))
                    for o_box, o_score, o_label in zip(o_boxes, o_scores, o_labels, strict=True)
                    if o_label == label and float(box_iou(box, o_box)[0, 0]) >= IOU_BAR
                ]
                assert matches, (box, score, label, o_boxes, o_scores, o_labels)
                assert min(matches) <= SCORE_TOLERANCE, (score, matches)
