"""Detectors: every registered one builds and returns normalized boxes; weights load safely.

Parametrised over the registry, so a new detector is tested without new tests. Nothing here
downloads: zoo models are built with weights=None and checked with random or saved weights.
"""

from __future__ import annotations

import hashlib
import io

import fsspec
import numpy as np
import pytest
import torch

from vidbatch.index import tables
from vidbatch.media.decode import decode_samples
from vidbatch.media.synth import SHAPES, write_video
from vidbatch.models import list_models, load_model, read_metadata
from vidbatch.models.detection import (
    COCO_CATEGORIES,
    Detector,
    detections_table,
)
from vidbatch.models.registry import get_model_spec
from vidbatch.specs import FrameSpec
from vidbatch.tools.evaluate import box_iou

DETECTORS = [spec.name for spec in list_models(task="detect")]
SMALLEST = "ssdlite320_mobilenet_v3_large"
FRAME = np.random.default_rng(0).integers(0, 256, size=(90, 160, 3), dtype=np.uint8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small frames gain nothing from more threads, and on a busy 2-core host they thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_input(detector: Detector) -> Detector:
    """Run the 800 px zoo models at 128 px with few proposals: plumbing, not accuracy, is tested.

    fasterrcnn_resnet50_fpn_v2 alone otherwise takes a minute on CPU (1000 proposals per frame).
    """
    module = detector.module
    if not module.transform.fixed_size and module.transform.max_size > 320:
        module.transform.min_size, module.transform.max_size = (128,), 128
    if hasattr(module, "rpn"):
        module.rpn._pre_nms_top_n = {"training": 2000, "testing": 100}
        module.rpn._post_nms_top_n = {"training": 2000, "testing": 20}
    return detector


def test_zoo_is_registered():
    expected = {
        "ssdlite320_mobilenet_v3_large",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "retinanet_resnet50_fpn_v2",
        "fcos_resnet50_fpn",
        "synth-detector",
    }
    assert expected <= set(DETECTORS)
    for name in expected:
        spec = get_model_spec(name)
        assert (spec.family, spec.task) == ("torchvision-detection", "detect")
        assert spec.summary


@pytest.mark.parametrize("name", DETECTORS)
def test_random_detector_returns_normalized_boxes(name):
    torch.manual_seed(0)
    detector = small_input(load_model(name, "random", device="cpu"))
    assert (detector.name, detector.task, detector.version) == (name, "detect", "random")
    assert detector.family == "torchvision-detection" and detector.batch_size >= 1
    wide, tall = FRAME, np.ascontiguousarray(FRAME.transpose(1, 0, 2))
    results = detector.detect([wide, tall, wide], min_score=0.0, max_detections=7)
    assert len(results) == 3
    for boxes, scores, labels in results:
        assert boxes.dtype == np.float32 and boxes.shape == (len(scores), 4)
        assert 0 < len(scores) <= 7 and len(labels) == len(scores)
        assert np.all((boxes >= 0) & (boxes <= 1))
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
        assert np.all(np.diff(scores) <= 0) and set(labels) <= set(detector.labels)


def test_boxes_are_relative_to_the_given_frame():
    torch.manual_seed(0)
    detector = load_model(SMALLEST, "random", device="cpu")
    boxes, scores, _ = detector.detect(FRAME[None], min_score=0.0, max_detections=5)[0]
    with torch.inference_mode():
        raw = detector.module([torch.from_numpy(FRAME).permute(2, 0, 1).float() / 255])[0]
    pixels = boxes * np.array([160, 90, 160, 90], np.float32)
    np.testing.assert_allclose(pixels, raw["boxes"][: len(boxes)].numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, raw["scores"][: len(scores)].numpy(), rtol=1e-6)
    assert detector.labels == list(COCO_CATEGORIES) and detector.frame is None


def test_min_score_and_max_detections_are_honoured():
    torch.manual_seed(0)
    detector = load_model(SMALLEST, "random", device="cpu")
    everything = detector.detect([FRAME], min_score=0.0, max_detections=300)[0][1]
    cut = float(np.median(everything))
    _, scores, _ = detector.detect([FRAME], min_score=cut, max_detections=300)[0]
    assert len(scores) and scores.min() >= cut
    assert len(detector.detect([FRAME], min_score=0.0, max_detections=3)[0][1]) == 3
    assert detector.detect([], min_score=0.0, max_detections=3) == []
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect([FRAME.astype(np.float32)], min_score=0.0, max_detections=3)


def test_results_become_detections_rows():
    torch.manual_seed(0)
    detector = load_model(SMALLEST, "random", device="cpu")
    results = detector.detect([FRAME, FRAME], min_score=0.0, max_detections=4)
    results.append((np.empty((0, 4), np.float32), np.empty(0, np.float32), []))  # nothing found
    table = detections_table(
        detector, results, uri="s3://b/v.mp4", frame_times=[0.0, 1.0, 2.0], video_id="v", run_id="r"
    )
    assert table.schema == tables.DETECTIONS and table.num_rows == 8
    assert table.column("frame_time_s").to_pylist() == [0.0] * 4 + [1.0] * 4
    assert table.column("label").to_pylist() == results[0][2] + results[1][2]
    np.testing.assert_array_equal(
        table.column("x2").to_numpy(), np.r_[results[0][0][:, 2], results[1][0][:, 2]]
    )
    empty = detections_table(detector, [], uri="u", frame_times=[])
    assert empty.num_rows == 0 and empty.schema == tables.DETECTIONS


def test_state_dict_round_trips_through_load_model(tmp_path):
    torch.manual_seed(1)
    original = load_model(SMALLEST, "random", device="cpu")
    path = tmp_path / "ssdlite.pth"
    torch.save(original.module.state_dict(), path)

    loaded = load_model(SMALLEST, str(path), device="cpu")
    assert isinstance(loaded, Detector)
    assert loaded.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    for key, value in original.module.state_dict().items():
        assert torch.equal(value, loaded.module.state_dict()[key]), key
    expected = original.detect([FRAME], min_score=0.0, max_detections=10)[0]
    got = loaded.detect([FRAME], min_score=0.0, max_detections=10)[0]
    np.testing.assert_array_equal(expected[0], got[0])
    assert expected[2] == got[2]

    # Through an fsspec URI, as torchvision's reference scripts save it, and without the
    # BatchNorm counters that weights published from FrozenBatchNorm2d models lack.
    state = {
        k: v
        for k, v in original.module.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    buffer = io.BytesIO()
    torch.save({"model": state, "epoch": 3}, buffer)
    with fsspec.open("memory://weights/ssdlite-ref.pth", "wb") as out:
        out.write(buffer.getvalue())
    from_uri = load_model(SMALLEST, "memory://weights/ssdlite-ref.pth", device="cpu")
    np.testing.assert_array_equal(
        from_uri.detect([FRAME], min_score=0.0, max_detections=10)[0][0], expected[0]
    )


def test_wrong_state_dict_is_one_clear_line(tmp_path):
    other = load_model("fasterrcnn_mobilenet_v3_large_320_fpn", "random", device="cpu")
    path = tmp_path / "frcnn.pth"
    torch.save(other.module.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit") as info:
        load_model(SMALLEST, str(path), device="cpu")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth"):
        load_model(SMALLEST, str(tmp_path / "junk.pth"), device="cpu")


class _Payload:
    """A pickle that would create a file when unpickled: code, not weights."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": _Payload(str(marker))}, path)

    with pytest.raises(ValueError, match="refused") as info:
        load_model(SMALLEST, str(path), device="cpu")
    assert "\n" not in str(info.value) and "weights_only" in str(info.value)
    assert not marker.exists()

    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs weights.*state dict.*'random'"):
        load_model("fasterrcnn_resnet50_fpn_v2")
    with pytest.raises(ValueError, match="weights"):
        load_model("fasterrcnn_resnet50_fpn_v2")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_model(SMALLEST, str(tmp_path / "nowhere.pth"))


def test_shipped_checkpoint_records_how_it_was_made():
    meta = read_metadata(get_model_spec("synth-detector").default_weights)
    assert meta.labels == SHAPES and meta.task == "detect"
    assert meta.metrics["holdout_map_50"] >= 0.8
    assert meta.metrics["command"].startswith("python jobs/train_detector.py")


@pytest.mark.parametrize(
    ("shape", "label", "size", "seed"),
    [
        ("circle", "static", (320, 240), 3),
        ("square", "growing", (352, 288), 4),
        ("triangle", "rotating_cw", (240, 320), 5),
    ],
)
def test_shipped_detector_finds_the_synth_shape(tmp_path, shape, label, size, seed):
    detector = load_model("synth-detector", device="cpu")
    assert detector.frame == FrameSpec(size=160) and detector.labels == list(SHAPES)
    uri = str(tmp_path / "clip.mp4")
    rows = write_video(
        uri, label=label, shape=shape, seconds=2.0, fps=25, width=size[0], height=size[1], seed=seed
    )
    t = 1.0
    truth = next(r for r in rows if abs(r["frame_time_s"] - t) < 1e-3)
    for spec in (detector.frame, FrameSpec()):  # the model's size, and the job's default
        frames = decode_samples(uri, frame_spec=spec, frame_times=[t]).frames
        boxes, scores, labels = detector.detect(frames, min_score=0.3, max_detections=5)[0]
        assert len(boxes), f"nothing found at {spec.size}px"
        iou = box_iou(boxes, [[truth["x1"], truth["y1"], truth["x2"], truth["y2"]]])[:, 0]
        assert iou[0] >= 0.7, (spec.size, iou, labels, scores)  # the best box is on the shape
        right = [i for i, label in enumerate(labels) if label == shape]
        assert right and iou[right[0]] >= 0.7, (spec.size, iou, labels, scores)
