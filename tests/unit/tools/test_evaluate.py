"""Scoring against hand-made truth whose AP is known by construction."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.unit.tools.test_query import detection, video, write_index
from vidbatch.tools.evaluate import (
    average_precision,
    box_iou,
    evaluate,
    evaluate_classification,
    evaluate_detection,
    format_report,
)

A, B = "/videos/a.mp4", "/videos/b.mp4"


def boxes(rows: list[tuple]) -> pa.Table:
    """Truth rows (uri, t, label, x1, y1, x2, y2), as boxes.parquet has them."""
    keys = ("uri", "frame_time_s", "label", "x1", "y1", "x2", "y2")
    return pa.Table.from_pylist([dict(zip(keys, r, strict=True)) for r in rows])


def detections(rows: list[tuple], model: str = "det") -> pa.Table:
    """Prediction rows (uri, t, label, score, x1, y1, x2, y2) of one model."""
    keys = ("uri", "frame_time_s", "label", "score", "x1", "y1", "x2", "y2")
    return pa.Table.from_pylist([{**dict(zip(keys, r, strict=True)), "model": model} for r in rows])


TRUTH = boxes(
    [
        (A, 0.0, "circle", 0.1, 0.1, 0.4, 0.4),
        (A, 1.0, "circle", 0.2, 0.2, 0.5, 0.5),
        (A, 1.0, "square", 0.6, 0.6, 0.9, 0.9),
        (B, 0.0, "square", 0.0, 0.0, 0.5, 0.5),
    ]
)
FRAMES = pa.table({"uri": [A, A, B], "frame_time_s": [0.0, 1.0, 0.0]})


def rows_of(table: pa.Table) -> list[tuple]:
    return [tuple(r.values()) for r in table.to_pylist()]


def test_perfect_predictions_score_one():
    preds = detections([(u, t, lab, 0.9, *box) for u, t, lab, *box in rows_of(TRUTH)])
    result = evaluate_detection(preds, TRUTH, frames=FRAMES)["det"]
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map_50_95"] == pytest.approx(1.0)
    assert result["ap_50"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}
    assert result["truth_boxes"] == 4 and result["predictions"] == 4


def test_one_missed_box_gives_the_101_point_value():
    # circle: 1 of 2 found at precision 1 -> recall points 0.00..0.50 score 1, the rest 0.
    rows = [(u, t, lab, 0.9, *box) for u, t, lab, *box in rows_of(TRUTH)]
    preds = detections([r for r in rows if not (r[1] == 1.0 and r[2] == "circle")])
    result = evaluate_detection(preds, TRUTH, frames=FRAMES)["det"]
    assert result["ap_50"]["circle"] == pytest.approx(51 / 101)
    assert result["ap_50"]["square"] == pytest.approx(1.0)
    assert result["map_50"] == pytest.approx((51 / 101 + 1.0) / 2)


def test_wrong_class_is_a_false_positive_and_a_miss():
    rows = [(u, t, lab, 0.9, *box) for u, t, lab, *box in rows_of(TRUTH)]
    rows[3] = (B, 0.0, "circle", 0.9, 0.0, 0.0, 0.5, 0.5)  # the square of B called a circle
    result = evaluate_detection(detections(rows), TRUTH, frames=FRAMES)["det"]
    # circle: 3 predictions at one score, 2 right of 2 truth; ties keep input order, so the
    # ranking is TP, TP, FP -> precision 1 up to recall 1.
    assert result["ap_50"]["circle"] == pytest.approx(1.0)
    # square: one of two found (the other was predicted as a circle).
    assert result["ap_50"]["square"] == pytest.approx(51 / 101)


def test_a_higher_scored_false_positive_lowers_precision():
    rows = [(u, t, lab, 0.5, *box) for u, t, lab, *box in rows_of(TRUTH)]
    rows.append((B, 0.0, "circle", 0.99, 0.6, 0.6, 0.9, 0.9))  # nothing there
    result = evaluate_detection(detections(rows), TRUTH, frames=FRAMES)["det"]
    # circle ranking FP, TP, TP: precision envelope 2/3 at every recall point.
    assert result["ap_50"]["circle"] == pytest.approx(2 / 3)


def test_iou_threshold_is_inclusive():
    truth = boxes([(A, 0.0, "circle", 0.0, 0.0, 1.0, 1.0)])
    frames = pa.table({"uri": [A], "frame_time_s": [0.0]})
    half = detections([(A, 0.0, "circle", 0.9, 0.0, 0.0, 0.5, 1.0)])  # IoU exactly 0.5
    assert box_iou([[0, 0, 0.5, 1]], [[0, 0, 1, 1]])[0, 0] == 0.5
    result = evaluate_detection(half, truth, frames=frames)["det"]
    assert result["map_50"] == pytest.approx(1.0)
    assert result["map_50_95"] == pytest.approx(0.1)  # matched at 0.5 only, of ten thresholds
    under = detections([(A, 0.0, "circle", 0.9, 0.0, 0.0, 0.49, 1.0)])  # IoU 0.49
    assert evaluate_detection(under, truth, frames=frames)["det"]["map_50"] == 0.0


def test_one_truth_box_matches_one_prediction():
    truth = boxes([(A, 0.0, "circle", 0.1, 0.1, 0.4, 0.4)])
    frames = pa.table({"uri": [A], "frame_time_s": [0.0]})
    twice = detections(
        [(A, 0.0, "circle", 0.9, 0.1, 0.1, 0.4, 0.4), (A, 0.0, "circle", 0.8, 0.1, 0.1, 0.4, 0.4)]
    )
    # TP then a duplicate FP: recall 1 is reached at precision 1 first.
    assert evaluate_detection(twice, truth, frames=frames)["det"]["map_50"] == pytest.approx(1.0)


def test_times_match_within_a_millisecond_only():
    truth = boxes([(A, 1.0, "circle", 0.1, 0.1, 0.4, 0.4)])
    frames = pa.table({"uri": [A], "frame_time_s": [1.0]})
    near = detections([(A, 1.0009, "circle", 0.9, 0.1, 0.1, 0.4, 0.4)])
    far = detections([(A, 1.002, "circle", 0.9, 0.1, 0.1, 0.4, 0.4)])
    assert evaluate_detection(near, truth, frames=frames)["det"]["map_50"] == pytest.approx(1.0)
    assert evaluate_detection(far, truth, frames=frames)["det"]["map_50"] == 0.0


def test_only_sampled_frames_are_scored():
    truth = boxes([(A, t / 10, "circle", 0.1, 0.1, 0.4, 0.4) for t in range(21)])  # 10 fps truth
    preds = detections([(A, t, "circle", 0.9, 0.1, 0.1, 0.4, 0.4) for t in (0.0, 1.0)])
    # Sampled at 1 fps: frames 0, 1 and 2 s; nothing was detected at 2 s, a miss.
    result = evaluate_detection(preds, truth)["det"]
    assert result["frames_from"] == "inferred"
    assert result["truth_boxes"] == 3
    assert result["ap_50"]["circle"] == pytest.approx(67 / 101)  # recall 2/3 at precision 1
    given = pa.table({"uri": [A, A], "frame_time_s": [0.0, 1.0]})
    assert evaluate_detection(preds, truth, frames=given)["det"]["map_50"] == pytest.approx(1.0)


def test_models_are_scored_separately_and_foreign_labels_are_not_scored():
    good = detections([(u, t, lab, 0.9, *box) for u, t, lab, *box in rows_of(TRUTH)], "good")
    coco = detections([(A, 0.0, "person", 0.9, 0.1, 0.1, 0.4, 0.4)], "coco")
    result = evaluate_detection(pa.concat_tables([good, coco]), TRUTH, frames=FRAMES)
    assert result["good"]["map_50"] == pytest.approx(1.0)
    assert result["coco"]["map_50"] == 0.0
    assert result["coco"]["unscored_labels"] == ["person"]


def test_average_precision_edge_cases():
    assert average_precision([], [], 3) == 0.0
    assert average_precision([0.9, 0.8], [True, True], 2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        average_precision([0.9], [True], 0)


def test_classification_accuracy_recall_and_video_vote():
    truth = pa.table({"uri": [A, B], "label": ["growing", "static"]})
    clips = pa.table(
        {
            "uri": [A, A, A, B, B, "/videos/unknown.mp4"],
            "clip_start_s": [0.0, 2.0, 4.0, 0.0, 2.0, 0.0],
            "label": ["growing", "growing", "shrinking", "blinking", "static", "static"],
            "score": [0.9, 0.8, 0.7, 0.9, 0.6, 0.9],
            "model": ["cnn"] * 6,
        }
    )
    result = evaluate_classification(clips, truth)["cnn"]
    assert result["clips"] == 5 and result["unmatched_clips"] == 1
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_class_recall"] == {
        "growing": pytest.approx(2 / 3),
        "static": pytest.approx(1 / 2),
    }
    # Video vote weighs clips by score: B sums blinking 0.9 > static 0.6.
    assert result["video_accuracy"] == pytest.approx(1 / 2)


def test_evaluate_reads_files_and_reports(tmp_path):
    truth_dir = tmp_path / "archive"
    truth_dir.mkdir()
    pq.write_table(TRUTH, truth_dir / "boxes.parquet")
    pq.write_table(
        pa.table({"uri": [A, B], "label": ["growing", "static"]}), truth_dir / "labels.parquet"
    )
    preds = detections([(u, t, lab, 0.9, *box) for u, t, lab, *box in rows_of(TRUTH)])
    pq.write_table(preds.drop(["model"]), tmp_path / "synth-detector.parquet")

    result = evaluate(str(tmp_path / "synth-detector.parquet"), str(truth_dir / "boxes.parquet"))
    assert result["detection"]["synth-detector"]["map_50"] == pytest.approx(1.0)
    report = format_report(result)
    assert "detection synth-detector: mAP@0.5 1.000" in report

    with pytest.raises(ValueError, match="nothing to score"):
        evaluate(str(tmp_path / "synth-detector.parquet"), str(truth_dir / "labels.parquet"))
    assert "detection" in evaluate(str(tmp_path / "synth-detector.parquet"), str(truth_dir))


def _index_rows(rows: list[tuple], run_id: str) -> list[dict]:
    """Detection rows of the index (all columns) from (uri, t, label, score, x1..y2) tuples."""
    keys = ("x1", "y1", "x2", "y2")
    return [
        detection(
            u,
            t,
            lab,
            score,
            model="synth-detector",
            run_id=run_id,
            **dict(zip(keys, box, strict=True)),
        )
        for u, t, lab, score, *box in rows
    ]


def test_evaluate_scores_the_current_state_of_an_index(tmp_path):
    """A Delta index written through IndexStore: a re-index replaced run r1's wrong rows, so
    only r2's count; the videos table lists the frames looked at, so c.mp4, where nothing was
    found, has its square counted as missed."""
    out = str(tmp_path / "index")
    rows = [(u, t, lab, 0.9, *box) for u, t, lab, *box in rows_of(TRUTH)]
    videos = [
        video(A, duration_s=2.0),
        video(B, duration_s=1.0),
        video("/videos/c.mp4", duration_s=1.0),
    ]
    wrong = [(u, t, "square", *rest) for u, t, _, *rest in rows]
    write_index(out, videos=videos, detections=_index_rows(wrong, "r1"), run_id="r1")
    write_index(out, videos=videos, detections=_index_rows(rows, "r2"), run_id="r2", replace=True)
    c_truth = boxes([("/videos/c.mp4", 0.0, "square", 0.1, 0.1, 0.2, 0.2)])
    pq.write_table(pa.concat_tables([TRUTH, c_truth]), tmp_path / "boxes.parquet")

    result = evaluate(out, str(tmp_path / "boxes.parquet"))["detection"]["synth-detector"]
    assert result["predictions"] == 4  # r2's rows only
    assert result["ap_50"]["circle"] == pytest.approx(1.0)
    assert result["ap_50"]["square"] == pytest.approx(67 / 101)  # 2 of 3 squares found
    assert result["frames_from"] == "given" and result["truth_frames"] == 4
    assert not math.isnan(result["map_50_95"])


def test_truth_as_csv_is_read_by_content(tmp_path):
    """CSV truth works whatever its name; a file that is neither says so, naming it."""
    preds = detections([(u, t, lab, 0.9, *box) for u, t, lab, *box in rows_of(TRUTH)])
    pq.write_table(preds, tmp_path / "preds.parquet")
    for name in ("boxes.csv", "boxes.txt"):
        pacsv.write_csv(TRUTH, tmp_path / name)
        result = evaluate(str(tmp_path / "preds.parquet"), str(tmp_path / name))
        assert result["detection"]["det"]["map_50"] == pytest.approx(1.0)
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"garbage\.bin: neither Parquet \(no PAR1 header\)"):
        evaluate(str(tmp_path / "preds.parquet"), str(tmp_path / "garbage.bin"))
    folder = tmp_path / "archive"  # a truth folder may hold CSV too
    folder.mkdir()
    pacsv.write_csv(TRUTH, folder / "boxes.csv")
    assert "detection" in evaluate(str(tmp_path / "preds.parquet"), str(folder))


def test_a_missing_column_names_the_file_and_the_close_column(tmp_path):
    preds = detections([(A, 0.0, "circle", 0.9, 0.1, 0.1, 0.4, 0.4)])
    pq.write_table(preds, tmp_path / "preds.parquet")
    pacsv.write_csv(
        TRUTH.rename_columns(["uri", "frame_time", *TRUTH.column_names[2:]]), tmp_path / "t.csv"
    )
    with pytest.raises(ValueError) as info:
        evaluate(str(tmp_path / "preds.parquet"), str(tmp_path / "t.csv"))
    message = str(info.value)
    assert message.startswith(f"truth {tmp_path / 't.csv'}: missing column(s) frame_time_s")
    assert "did you mean 'frame_time' for 'frame_time_s'?" in message


def test_cli_eval_on_s3_with_storage_options(s3, s3_server, capsys):
    from tests.conftest import make_bucket
    from vidbatch.cli import main

    fs, options = s3
    make_bucket(s3_server, "eval-index")
    uri = "s3://eval-index/out"
    rows = [(u, t, lab, 0.9, *box) for u, t, lab, *box in rows_of(TRUTH)]
    videos = [video(A, duration_s=2.0), video(B, duration_s=1.0)]
    write_index(uri, videos=videos, detections=_index_rows(rows, "r1"), storage_options=options)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(TRUTH, sink)
    fs.pipe_file("eval-index/truth/boxes.csv", sink.getvalue().to_pybytes())
    argv = ["eval", "--predictions", uri, "--truth", "s3://eval-index/truth/boxes.csv"]
    assert main([*argv, "--storage-options", json.dumps(options)]) == 0
    assert "detection synth-detector: mAP@0.5 1.000" in capsys.readouterr().out
