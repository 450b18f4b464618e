"""Reproduce the shipped synth-detector: synthesize seeded archives (train and a held-out one
with another seed), decode frames with vidbatch's decoder, train FCOS on a tiny CNN from scratch
on CPU, score it with vidbatch.tools.evaluate, and write vidbatch/assets/synth-detector.safetensors.

    python jobs/train_detector.py            # defaults reproduce the shipped checkpoint
    python jobs/train_detector.py --report   # also rewrite the results in docs/detection.md

Runs as a Ray Job unchanged: ray job submit --working-dir . -- python jobs/train_detector.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from docs_section import replace_section

from vidbatch.training.train_detect import DetectorTrainConfig, TrainedDetector, train_detector

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- results:begin (written by jobs/train_detector.py --report) -->"
END = "<!-- results:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = DetectorTrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=defaults.output, help="checkpoint path or URI")
    p.add_argument("--report", action="store_true", help="rewrite the results in docs/detection.md")
    p.add_argument("--docs", default=str(ROOT / "docs" / "detection.md"))
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--train-videos", type=int, default=defaults.train_videos)
    p.add_argument("--holdout-videos", type=int, default=defaults.holdout_videos)
    p.add_argument("--frames-per-video", type=int, default=defaults.frames_per_video)
    p.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads")
    p.add_argument("--eval-every", type=int, default=0, help="also score every N epochs")
    p.add_argument("--work-dir", default=None, help="keep the synthetic archives here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = DetectorTrainConfig(
        output=args.output,
        epochs=args.epochs,
        train_videos=args.train_videos,
        holdout_videos=args.holdout_videos,
        frames_per_video=args.frames_per_video,
        threads=args.threads,
        eval_every=args.eval_every,
        work_dir=args.work_dir,
    )
    if config.work_dir:
        os.makedirs(config.work_dir, exist_ok=True)

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)

    argv = list(argv if argv is not None else sys.argv[1:])
    result = train_detector(config, log=log, command=_command(argv))
    if args.report:
        write_report(Path(args.docs), result, argv)
        print(f"wrote {args.docs}")
    return 0


def render_report(result: TrainedDetector, argv: list[str]) -> str:
    m = result.metrics
    c = m["config"]
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in m["holdout_ap_50"].items())
    job_size = next(k for k in m if k.startswith("holdout_map_50_at_")).rsplit("_", 1)[1]
    command = _command(argv)
    return "\n".join(
        [
            BEGIN,
            "",
            "## Shipped synth-detector: held-out results",
            "",
            f"Held-out: {m['holdout_frames']} frames ({m['holdout_boxes']} boxes) from a fresh "
            f"archive of {c['holdout_videos']} videos (seed {c['holdout_seed']}); training: "
            f"{m['train_frames']} frames of {c['train_videos']} videos (seed {c['train_seed']}), "
            f"{c['epochs']} epochs, batch {c['batch_size']}. Frames decoded at "
            f"{c['arch']['size']} px (longer side), scored with `vidbatch.tools.evaluate`.",
            "",
            "| metric | value |",
            "| --- | ---: |",
            f"| held-out mAP@0.5 | **{m['holdout_map_50']:.3f}** |",
            f"| held-out mAP@0.5:0.95 | {m['holdout_map_50_95']:.3f} |",
            f"| held-out AP@0.5 per class | {per_class} |",
            f"| mAP@0.5 / @0.5:0.95 on the same frames decoded at {job_size} | "
            f"{m[f'holdout_map_50_at_{job_size}']:.3f} / "
            f"{m[f'holdout_map_50_95_at_{job_size}']:.3f} |",
            f"| checkpoint | {result.size_bytes / 1e6:.2f} MB, version `{result.version}` |",
            f"| wall time, total (synthesis + decode + training + scoring) | "
            f"{m['total_seconds']:.0f} s |",
            f"| wall time, training | {m['train_seconds']:.0f} s "
            f"(CPU time {m['train_cpu_seconds']:.0f} s, torch threads: {m['threads']}) |",
            "",
            "Reproduce (CPU only, nothing downloaded):",
            "",
            "```",
            command,
            "```",
            "",
            f"Measured on {os.cpu_count()} CPU cores ({platform.machine()}), torch "
            f"{torch.__version__.split('+')[0]}, no GPU, with other jobs sharing the machine.",
            "",
            END,
        ]
    )


def _command(argv: list[str]) -> str:
    return " ".join(["python jobs/train_detector.py", *argv])


def write_report(path: Path, result: TrainedDetector, argv: list[str]) -> None:
    """Replace the results section of docs/detection.md (or append it), keeping the prose."""
    replace_section(path, render_report(result, argv), BEGIN, END, "# Detection")


if __name__ == "__main__":
    raise SystemExit(main())
