"""torchvision's zoo (weights by name through a pre-seeded torch cache, or a file) and a user's
own models by `module:factory`. Nothing here touches the network."""

from __future__ import annotations

import hashlib
import socket

import av
import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torchvision.models._api import Weights, WeightsEnum

from tests.support import custom_model
from vidbatch.media.decode import decode_clips, decode_samples
from vidbatch.media.synth import write_video
from vidbatch.models import Detector, describe_model, get_model_spec, list_models, load_model
from vidbatch.models.checkpoint import read_state_dict
from vidbatch.models.tv_weights import (
    OFFLINE_ENV,
    cache_path,
    is_weights_name,
    weights_file_bytes,
)
from vidbatch.models.video_zoo import NAMES, weights_meta
from vidbatch.specs import ClipSpec, FrameSpec
from vidbatch.tools.evaluate import box_iou

ZOO = [s.name for s in list_models(family="torchvision-video")]
R3D = tvm.get_model_weights("r3d_18").KINETICS400_V1
SSDLITE = "ssdlite320_mobilenet_v3_large"
DETECTOR = "tests.support.custom_model:build_detector"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache of the test's own (TORCH_HOME), downloads refused."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    return home


def random_r3d_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return tvm.video.r3d_18(weights=None).state_dict()


# ---------------------------------------------------------------- the video zoo


def test_every_torchvision_video_classifier_is_registered_with_kinetics_metadata():
    assert sorted(ZOO) == sorted(NAMES)
    for name in ZOO:
        meta = weights_meta(name)
        assert len(meta["labels"]) == 400 and meta["clip"].size in (112, 224)
        assert get_model_spec(name).labels == meta["labels"]


def test_zoo_preprocessing_comes_from_torchvision_transforms_and_meta():
    assert weights_meta("r3d_18")["clip"] == ClipSpec(16, 15.0, 112, resize=(128, 171))
    s3d = tvm.get_model_weights("s3d").DEFAULT
    assert s3d.meta["min_temporal_size"] == 14
    assert weights_meta("s3d")["clip"] == ClipSpec(16, 15.0, 224, resize=(256, 256))
    assert weights_meta("r3d_18")["mean"] == tuple(R3D.transforms().mean)
    info = describe_model("r3d_18", "random")
    assert info.input == "16 frames at 15 fps, resize 128x171, centre 112"


def test_clips_are_resized_then_centre_cropped(tmp_path):
    """ClipSpec.resize: scaled to (128, 171), then the centre 112x112, as torchvision's
    VideoClassification transform does (not squashed to 112x112)."""
    uri = str(tmp_path / "v.mp4")
    write_video(uri, label="static", shape="square", seconds=1.0, fps=25, width=320, height=180)
    clip = ClipSpec(frames=2, fps=25.0, size=112, resize=(128, 171))
    got = decode_clips(uri, [0.0], clip)
    assert got.shape == (1, 2, 112, 112, 3)
    with av.open(uri) as container:
        first = next(container.decode(video=0))
        full = first.reformat(width=171, height=128, format="rgb24").to_ndarray()
    np.testing.assert_array_equal(got[0, 0], full[8:120, 30:142])  # round((128-112)/2), round(59/2)
    squashed = decode_clips(uri, [0.0], ClipSpec(frames=2, fps=25.0, size=112))
    assert not np.array_equal(squashed[0, 0], got[0, 0])


def test_zoo_model_needs_weights_or_random():
    with pytest.raises(ValueError, match="needs weights: a torchvision weights name"):
        load_model("r3d_18")


def test_zoo_state_dict_round_trip_and_predict(tmp_path):
    random = load_model("r3d_18", "random", device="cpu")
    assert random.clip == ClipSpec(16, 15.0, 112, resize=(128, 171))
    path = tmp_path / "r3d.pth"
    torch.save(random.module.model.state_dict(), path)
    loaded = load_model("r3d_18", str(path), device="cpu")
    assert loaded.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert loaded.labels == random.labels
    info = describe_model("r3d_18", str(path))
    assert (info.version, info.clip, info.labels) == (
        loaded.version,
        loaded.clip,
        tuple(loaded.labels),
    )
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


# ---------------------------------------------------------------- weights by name


def test_weights_names_are_told_from_files():
    for name in ("DEFAULT", "KINETICS400_V1", "R3D_18_Weights.KINETICS400_V1", "COCO_V1"):
        assert is_weights_name(name), name
    for uri in ("r3d.pth", "./DEFAULT", "/models/KINETICS400_V1", "s3://b/DEFAULT", "random", ""):
        assert not is_weights_name(uri), uri


def test_weights_names_are_checked_against_the_model(torch_home):
    with pytest.raises(
        ValueError,
        match=r"no torchvision weights 'KINETICS400_V9'.*R3D_18_Weights: DEFAULT, KINETICS400_V1",
    ):
        load_model("r3d_18", "KINETICS400_V9")
    with pytest.raises(ValueError, match="MC3_18_Weights.KINETICS400_V1 are not its weights"):
        describe_model("r3d_18", "MC3_18_Weights.KINETICS400_V1")
    with pytest.raises(ValueError, match="no torchvision weights 'COCO_V1'"):
        load_model("r3d_18", "COCO_V1")


@pytest.mark.parametrize(
    ("name", "weights", "qualified"),
    [
        ("r3d_18", "DEFAULT", "R3D_18_Weights.KINETICS400_V1"),
        ("r3d_18", "R3D_18_Weights.KINETICS400_V1", "R3D_18_Weights.KINETICS400_V1"),
        (SSDLITE, "COCO_V1", "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"),
    ],
)
def test_offline_without_the_file_is_one_line_naming_weight_cache_and_fetch(
    torch_home, name, weights, qualified
):
    for call in (load_model, describe_model):
        with pytest.raises(FileNotFoundError) as info:
            call(name, weights)
        message = str(info.value)
        assert "\n" not in message
        assert f"torchvision weights {qualified} are not in the torch cache" in message
        assert str(torch_home / "hub" / "checkpoints") in message
        assert f"get_weight('{qualified}').get_state_dict(check_hash=True)" in message
        assert OFFLINE_ENV in message


def test_a_failed_download_is_the_same_one_line_error(torch_home, monkeypatch):
    """Downloads allowed, but the only way out is a proxy on a closed loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.delenv(OFFLINE_ENV)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{closed}")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FileNotFoundError, match="could not be downloaded") as info:
        load_model("r3d_18", "KINETICS400_V1")
    assert "\n" not in str(info.value) and "r3d_18-b3b3357e.pth" in str(info.value)


def test_a_cached_file_that_is_not_torchvisions_fails_the_hash_check(torch_home):
    """The honest path for a seeded cache: a random state dict under torchvision's file name
    cannot have the sha256 prefix the name carries, so it is refused (torch.hub's check)."""
    path = cache_path(R3D)
    assert path == str(torch_home / "hub" / "checkpoints" / "r3d_18-b3b3357e.pth")
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(random_r3d_state(), path)
    for call in (load_model, describe_model):
        with pytest.raises(ValueError, match="hash check") as info:
            call("r3d_18", "KINETICS400_V1")
        assert "\n" not in str(info.value) and path in str(info.value)
        assert "does not start with b3b3357e" in str(info.value)


def test_a_cached_file_with_the_right_hash_is_used_offline(torch_home):
    buffer = torch_home / "state.pth"
    torch_home.mkdir()
    torch.save(random_r3d_state(1), buffer)
    data = buffer.read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]

    class Seeded(WeightsEnum):
        """A weights record like torchvision's, for a file whose hash this test knows."""

        V1 = Weights(
            url=f"https://download.invalid/models/r3d_18-{prefix}.pth",
            transforms=R3D.transforms,
            meta=R3D.meta,
        )

    seeded = Seeded.V1
    path = cache_path(seeded)
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    buffer.rename(path)
    assert weights_file_bytes(seeded) == data  # offline: VIDBATCH_OFFLINE=1, no network
    tvm.video.r3d_18(weights=None).load_state_dict(read_state_dict(data, path))


# ---------------------------------------------------------------- a user's own models


def test_custom_factory_model_loads_by_name():
    model = load_model("tests.support.custom_model:build", device="cpu")
    assert model.family == "custom" and model.labels == ["dark", "bright"]
    bright = np.full((1, 4, 32, 32, 3), 250, np.uint8)
    dark = np.full((1, 4, 32, 32, 3), 5, np.uint8)
    assert model.predict(bright).argmax() == 1 and model.predict(dark).argmax() == 0
    assert load_model("tests.support.custom_model:build").version == model.version  # stable
    spec = get_model_spec("tests.support.custom_model:build")
    assert (spec.family, spec.task) == ("custom", "classify")


def test_custom_version_includes_the_weights_file_hash(tmp_path):
    name = "tests.support.custom_model:build"
    own = load_model(name, device="cpu")
    versions = set()
    for scale in (3.0, 5.0):
        path = tmp_path / f"brightness-{scale}.pth"
        torch.save({"scale": torch.tensor(scale)}, path)
        model = load_model(name, str(path), device="cpu")
        assert model.version == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        assert describe_model(name, str(path)).version == model.version
        assert float(model.module.scale.detach()) == scale
        versions.add(model.version)
    assert len(versions) == 2 and own.version not in versions


def test_custom_detector_is_a_real_detector_on_real_frames(tmp_path):
    weights = get_model_spec("synth-detector").default_weights
    digest = hashlib.sha256(open(weights, "rb").read()).hexdigest()[:12]
    built = custom_model.BUILDS["detector"]
    info = describe_model(DETECTOR, weights)
    assert custom_model.BUILDS["detector"] == built  # described from declared metadata only
    assert (info.task, info.family, info.frame) == ("detect", "custom", FrameSpec(size=160))
    assert info.labels == ("circle", "square", "triangle")
    assert info.version == f"fcos-tiny-1+{digest}"

    detector = load_model(DETECTOR, weights, device="cpu")
    assert isinstance(detector, Detector) and detector.version == info.version
    assert detector.frame == info.frame and detector.labels == list(info.labels)
    uri = str(tmp_path / "circle.mp4")
    rows = write_video(
        uri, label="static", shape="circle", seconds=2.0, fps=25, width=320, height=240, seed=3
    )
    truth = next(r for r in rows if abs(r["frame_time_s"] - 1.0) < 1e-3)
    frames = decode_samples(uri, frame_spec=FrameSpec(size=160), frame_times=[1.0]).frames
    boxes, scores, labels = detector.detect(frames, min_score=0.3, max_detections=5)[0]
    assert len(boxes) and labels[0] == "circle", (labels, scores)
    iou = box_iou(boxes, [[truth["x1"], truth["y1"], truth["x2"], truth["y2"]]])[:, 0]
    assert iou[0] >= 0.7, iou


def test_custom_factory_errors_are_one_line():
    with pytest.raises(ValueError, match="cannot import factory"):
        load_model("tests.nowhere:build")
    with pytest.raises(ValueError, match="is not callable"):
        load_model("tests.support.custom_model:LABELS")
