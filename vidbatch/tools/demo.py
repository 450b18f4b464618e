"""`vidbatch demo`: the embedded default. Synthesize, index with the shipped model, query."""

from __future__ import annotations

import sys
from pathlib import Path

DEMO_MODEL = "motion-rnn"  # the best shipped classifier: held-out 0.988 (docs/models.md)
DEMO_DETECTOR = "synth-detector"


def run_demo(directory: str | Path = "vidbatch-demo", *, videos: int = 20) -> int:
    from vidbatch.config import config_from_dict
    from vidbatch.job.run import run_job
    from vidbatch.media.synth import synthesize
    from vidbatch.tools.query import query

    root = Path(directory).resolve()
    print(f"1/3 synthesizing {videos} labeled videos into {root / 'archive'}")
    archive = synthesize(root / "archive", videos, seed=7, min_seconds=4.0, max_seconds=12.0)
    config = config_from_dict(
        {
            "source": {"uri": str(archive.videos_dir)},
            "output": {"uri": str(root / "index")},
            "models": [{"name": DEMO_MODEL, "top_k": 3}, {"name": DEMO_DETECTOR, "min_score": 0.5}],
            "incremental": False,
        }
    )
    print(f"2/3 indexing with {DEMO_MODEL} and {DEMO_DETECTOR} on local Ray (one decode pass)")
    summary = run_job(config)
    print(summary.line())
    print("3/3 label counts over the clips table:")
    sql = "SELECT label, count(*) AS clips, round(avg(score), 3) AS avg_score FROM clips GROUP BY label ORDER BY clips DESC"
    table = query(str(root / "index"), sql)
    for row in table.to_pylist():
        print(f"  {row['label']:<14} {row['clips']:>5} clips  avg score {row['avg_score']}")
    print("most frequent detected labels:")
    sql = (
        "SELECT label, count(*) AS detections, round(avg(score), 3) AS avg_score "
        "FROM detections GROUP BY label ORDER BY detections DESC"
    )
    for row in query(str(root / "index"), sql).to_pylist():
        print(
            f"  {row['label']:<14} {row['detections']:>5} detections  avg score {row['avg_score']}"
        )
    print(f"index written to {root / 'index'}; try:")
    print(f'  vidbatch query {root / "index"} "SELECT uri, label, clip_start_s FROM clips LIMIT 5"')
    return 0 if summary.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(run_demo())
