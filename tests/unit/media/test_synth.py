"""Synthetic archive: real PyAV encode + decode of tiny videos."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from vidbatch.media import synth
from vidbatch.media.synth import CLASSES, CODECS, extension_for, synthesize, write_video

PAIRS = [("moving_right", "moving_left"), ("growing", "shrinking"), ("rotating_cw", "rotating_ccw")]


def _decode(path: Path) -> tuple[av.video.stream.VideoStream, list[av.VideoFrame]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    return stream, frames


def _write(tmp_path: Path, codec: str = "h264", **kwargs) -> tuple[Path, list[dict]]:
    params = dict(label="static", shape="square", seconds=1.0, fps=10, width=96, height=64)
    params.update(kwargs)
    path = tmp_path / f"{params['label']}{extension_for(codec)}"
    return path, write_video(path, codec=codec, **params)


def _relative_times(frames: list[av.VideoFrame]) -> list[float]:
    return [f.time - frames[0].time for f in frames]


# The formats the README promises real encodes and decodes of (H.264, HEVC, VP9, AV1, MPEG-4).
# A PyAV build without one of them fails here; nothing is skipped.
PROMISED = ("h264", "hevc", "vp9", "av1", "mpeg4")


def test_every_promised_codec_can_be_written() -> None:
    assert set(CODECS) == set(PROMISED)
    for codec in PROMISED:
        encoder = synth._CODECS[codec].encoder
        assert encoder in av.codecs_available, f"this PyAV build cannot encode {codec} ({encoder})"
        assert av.codec.Codec(encoder, "w").id == av.codec.Codec(codec, "r").id, encoder


@pytest.mark.parametrize("codec", PROMISED)
def test_each_codec_round_trips(tmp_path: Path, codec: str) -> None:
    path, rows = _write(tmp_path, codec, seconds=2.0, fps=25, width=96, height=64)
    stream, frames = _decode(path)
    assert stream.codec_context.codec.id == av.codec.Codec(codec, "r").id  # that format, decoded
    assert (frames[0].width, frames[0].height) == (96, 64)
    assert len(frames) == 50
    assert stream.average_rate == 25
    assert abs(frames[-1].time - frames[0].time + 1 / 25 - 2.0) <= 1 / 25
    assert [r["frame_time_s"] for r in rows] == pytest.approx(_relative_times(frames), abs=1e-6)


def test_box_rows_are_exact_and_normalized(tmp_path: Path) -> None:
    _, rows = _write(tmp_path, label="moving_left", shape="triangle", seconds=3.0, seed=4)
    assert rows, "a moving shape is visible most of the time"
    for row in rows:
        assert set(row) == {"frame_time_s", "label", "x1", "y1", "x2", "y2"}
        assert row["label"] == "triangle"
        assert 0.0 <= row["x1"] < row["x2"] <= 1.0 and 0.0 <= row["y1"] < row["y2"] <= 1.0


@pytest.mark.parametrize("rotation", [0, 90, 270])
def test_boxes_match_displayed_pixels(tmp_path: Path, rotation: int) -> None:
    path, rows = _write(tmp_path, label="blinking", seconds=3.0, seed=2, rotation=rotation)
    _, frames = _decode(path)
    assert frames[0].rotation == (rotation if rotation <= 180 else rotation - 360)
    shown = [np.rot90(f.to_ndarray(format="rgb24"), k=f.rotation // 90) for f in frames]
    by_time = {round(r["frame_time_s"], 6): r for r in rows}
    times = [round(t, 6) for t in _relative_times(frames)]
    off = [img for t, img in zip(times, shown, strict=True) if t not in by_time]
    assert off and len(off) < len(frames), "blinking has frames with and without the shape"
    height, width = shown[0].shape[:2]
    assert (width, height) == ((64, 96) if rotation in (90, 270) else (96, 64))
    for t, img in zip(times, shown, strict=True):
        if t in by_time:
            diff = np.abs(img.astype(int) - off[0].astype(int)).max(axis=2) > 60
            ys, xs = np.nonzero(diff)
            box = by_time[t]
            found = (
                xs.min() / width,
                ys.min() / height,
                (xs.max() + 1) / width,
                (ys.max() + 1) / height,
            )
            expected = (box["x1"], box["y1"], box["x2"], box["y2"])
            assert found == pytest.approx(expected, abs=2.5 / min(width, height))


@pytest.mark.parametrize("first, second", PAIRS)
def test_pairs_are_each_other_played_backwards(first: str, second: str) -> None:
    for seed in range(5):
        a = synth._Scene.draw(np.random.default_rng(seed), first, 320, 240)
        b = synth._Scene.draw(np.random.default_rng(seed), second, 320, 240)
        for t in np.linspace(0.0, 10.0, 37):
            assert a.pose(float(t)) == pytest.approx(b.pose(-float(t)))


@pytest.mark.parametrize("label, sign", [("moving_right", 1), ("moving_left", -1)])
def test_moving_direction(tmp_path: Path, label: str, sign: int) -> None:
    _, rows = _write(tmp_path, label=label, shape="circle", seconds=6.0, fps=8, seed=1)
    centres = np.array([(r["x1"] + r["x2"]) / 2 for r in rows])
    steps = np.diff(centres) * sign
    wraps = steps < -0.3  # re-entering from the other side
    assert (steps[~wraps] > 0).all()
    assert wraps.sum() <= 3


@pytest.mark.parametrize("label, sign", [("growing", 1), ("shrinking", -1)])
def test_size_sawtooth_direction(tmp_path: Path, label: str, sign: int) -> None:
    _, rows = _write(tmp_path, label=label, shape="circle", seconds=6.0, fps=8, seed=3)
    areas = np.array([(r["x2"] - r["x1"]) * (r["y2"] - r["y1"]) for r in rows])
    steps = np.diff(areas) * sign
    assert (steps >= 0).mean() > 0.8  # pixel rounding may hold a size for one frame
    assert (steps < -0.05).sum() <= 4  # one jump per 2-3 s period


@pytest.mark.parametrize("label, sign", [("rotating_cw", 1), ("rotating_ccw", -1)])
def test_rotation_is_unambiguous_at_8_fps(label: str, sign: int) -> None:
    for seed in range(10):
        scene = synth._Scene.draw(np.random.default_rng(seed), label, 320, 240)
        turn = np.degrees(scene.pose(1 / 8)[3] - scene.pose(0.0)[3]) * sign
        assert 7.0 <= turn <= 15.5  # clockwise on screen is increasing angle (y down)


@pytest.mark.parametrize("codec", ["h264", "vp9", "mpeg4"])
def test_odd_size_is_kept(tmp_path: Path, codec: str) -> None:
    path, rows = _write(tmp_path, codec, width=161, height=121)
    _, frames = _decode(path)
    assert (frames[0].width, frames[0].height) == (161, 121)
    assert len(rows) == len(frames) == 10


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_variable_frame_rate(tmp_path: Path, codec: str) -> None:
    path, rows = _write(tmp_path, codec, seconds=3.0, variable_frame_rate=True, seed=5)
    _, frames = _decode(path)
    gaps = np.round(np.diff(_relative_times(frames)), 2)
    assert set(gaps.tolist()) == {0.1, 0.2}
    assert [r["frame_time_s"] for r in rows] == pytest.approx(_relative_times(frames), abs=1e-6)


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_start_seconds(tmp_path: Path, codec: str) -> None:
    path, rows = _write(tmp_path, codec, start_seconds=2.0)
    stream, frames = _decode(path)
    assert float(stream.start_time * stream.time_base) == pytest.approx(2.0)
    assert frames[0].time == pytest.approx(2.0)
    assert rows[0]["frame_time_s"] == 0.0
    assert [r["frame_time_s"] for r in rows] == pytest.approx(_relative_times(frames), abs=1e-6)


def test_invalid_arguments(tmp_path: Path) -> None:
    base = dict(label="static", shape="square", seconds=1.0, fps=10, width=96, height=64)
    for bad in (
        {"label": "jumping"},
        {"shape": "star"},
        {"rotation": 45},
        {"codec": "theora"},
        {"label": "rotating_cw", "shape": "circle"},
        {"width": 8},
        {"seconds": 0},
    ):
        with pytest.raises(ValueError):
            write_video(tmp_path / "x.mp4", **{**base, **bad})
    assert not list(tmp_path.iterdir())


def _tables(root: Path) -> tuple:
    labels, boxes = pq.read_table(root / "labels.parquet"), pq.read_table(root / "boxes.parquet")
    names = [Path(u).name for u in labels["uri"].to_pylist()]
    box_names = [Path(u).name for u in boxes["uri"].to_pylist()]
    return (names, labels.drop(["uri"]).to_pylist(), box_names, boxes.drop(["uri"]).to_pylist())


def test_synthesize_is_deterministic_and_balanced(tmp_path: Path) -> None:
    kwargs = dict(seed=7, min_seconds=0.5, max_seconds=1.0)
    first = synthesize(tmp_path / "a", 8, **kwargs)
    parquet_bytes = Path(first.boxes_uri).read_bytes(), Path(first.labels_uri).read_bytes()
    video_bytes = [Path(u).read_bytes() for u in first.uris]
    again = synthesize(tmp_path / "a", 8, **kwargs)
    assert (
        Path(again.boxes_uri).read_bytes(),
        Path(again.labels_uri).read_bytes(),
    ) == parquet_bytes
    assert [Path(u).read_bytes() for u in again.uris] == video_bytes
    other = synthesize(tmp_path / "b", 8, **kwargs)
    assert _tables(tmp_path / "a") == _tables(tmp_path / "b")
    synthesize(tmp_path / "c", 8, **{**kwargs, "seed": 8})
    assert _tables(tmp_path / "a") != _tables(tmp_path / "c")

    assert sorted(first.labels) == sorted(CLASSES)
    assert all(re.fullmatch(r"vid-\d{5}\.mp4", Path(u).name) for u in first.uris)
    assert all(Path(u).is_absolute() and Path(u).is_file() for u in other.uris)
    labels = pq.read_table(first.labels_uri)
    assert labels.column_names[:2] == ["uri", "label"]
    assert labels["label"].to_pylist() == first.labels
    boxes = pq.read_table(first.boxes_uri)
    assert set(pc.unique(boxes["uri"]).to_pylist()) <= set(first.uris)
    assert not list((tmp_path / "a").glob("**/.*.partial"))
