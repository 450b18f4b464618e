"""Reproduce the shipped motion checkpoints: synthesize the labeled archive (seeded), train the
CNN, RNN and Transformer families on the same decoded clips and the same video split, write
them to vidbatch/assets/, and (with --report) the results section of docs/models.md.

    python jobs/train.py --family all --report

Hyperparameters live in jobs/train_motion-<family>.yaml (the same files `vidbatch train` reads);
this script only points them at the synthesized manifest and the assets folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from docs_section import replace_section

from vidbatch.media.synth import CLASSES, synthesize
from vidbatch.models.checkpoint import read_bytes, read_metadata, weights_version
from vidbatch.training.train import (
    ClipSet,
    TrainConfig,
    TrainResult,
    load_clip_set,
    load_train_config,
    train,
)

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("cnn", "rnn", "transformer")
PAIRS = (("moving_left", "moving_right"), ("growing", "shrinking"), ("rotating_cw", "rotating_ccw"))
BEGIN, END = "<!-- results:begin (written by jobs/train.py --report) -->", "<!-- results:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=(*FAMILIES, "all"), default="all")
    p.add_argument("--report", action="store_true", help="rewrite the results in docs/models.md")
    p.add_argument("--videos", type=int, default=480, help="synthetic videos (default 480)")
    p.add_argument("--seed", type=int, default=0, help="synthesis and training seed")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--workdir", default="tmp/vidbatch-train", help="synthetic archive goes here")
    p.add_argument("--assets", default=str(ROOT / "vidbatch" / "assets"), help="checkpoints out")
    p.add_argument("--configs", default=str(ROOT / "jobs"), help="train_motion-*.yaml folder")
    p.add_argument("--docs", default=str(ROOT / "docs" / "models.md"))
    p.add_argument("--epochs", type=int, default=None, help="override every config's epochs")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite the docs from the metadata of the checkpoints in --assets",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    families = FAMILIES if args.family == "all" else (args.family,)
    if args.report_only:
        results = {
            f: result_from_checkpoint(Path(args.assets) / f"motion-{f}.safetensors")
            for f in families
        }
        timings = {f"train {f}": float(r.metrics["train_seconds"]) for f, r in results.items()}
        write_report(Path(args.docs), results, timings, ["--family", args.family, "--report"])
        print(f"wrote {args.docs} from {', '.join(r.output for r in results.values())}")
        return 0
    began = time.perf_counter()
    timings: dict[str, float] = {}

    data_dir = Path(args.workdir) / f"synth-{args.videos}-seed{args.seed}"
    manifest = data_dir / "labels.parquet"
    t0 = time.perf_counter()
    if manifest.exists():
        print(f"reusing synthetic archive {data_dir}")
    else:
        print(f"synthesizing {args.videos} videos into {data_dir} ...", flush=True)
        synthesize(
            data_dir,
            args.videos,
            seed=args.seed,
            min_seconds=args.min_seconds,
            max_seconds=args.max_seconds,
        )
    timings["synthesize"] = time.perf_counter() - t0
    description = (
        f"vidbatch.media.synth: {args.videos} videos, seed {args.seed}, h264, "
        f"{args.min_seconds:g}-{args.max_seconds:g} s, {len(CLASSES)} classes"
    )

    configs = {f: _config(args, f, manifest, description) for f in families}
    clip_sets: dict[str, ClipSet] = {}
    results: dict[str, TrainResult] = {}
    for family, config in configs.items():
        key = json.dumps([dataclasses.asdict(config.data), dataclasses.asdict(config.clip)])
        if key not in clip_sets:
            t0 = time.perf_counter()
            clip_sets[key] = load_clip_set(config.data, config.clip)
            timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - t0
            print(f"decoded {clip_sets[key].clips.shape} in {timings['decode']:.1f}s", flush=True)
        results[family] = train(config, clip_set=clip_sets[key])
        timings[f"train {family}"] = results[family].metrics["train_seconds"]
        print(results[family], flush=True)
    timings["total"] = time.perf_counter() - began

    summary = {
        f: {
            "heldout_accuracy": r.metrics["heldout_accuracy"],
            "output": r.output,
            "version": r.version,
        }
        for f, r in results.items()
    }
    print(json.dumps({"results": summary, "timings_s": timings}, indent=2))
    if args.report:
        write_report(Path(args.docs), results, timings, argv if argv is not None else sys.argv[1:])
        print(f"wrote {args.docs}")
    return 0


def result_from_checkpoint(path: Path) -> TrainResult:
    """A TrainResult rebuilt from a checkpoint's metadata (metrics are stored in the file)."""
    data = read_bytes(str(path))
    meta = read_metadata(str(path))
    return TrainResult(
        output=str(path),
        version=weights_version(data),
        metrics=meta.metrics,
        history=[],
        meta=meta,
        size_bytes=len(data),
    )


def _config(args: argparse.Namespace, family: str, manifest: Path, description: str) -> TrainConfig:
    config = load_train_config(Path(args.configs) / f"train_motion-{family}.yaml")
    loop = config.train
    if args.epochs is not None:
        loop = dataclasses.replace(loop, epochs=args.epochs)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, manifest=str(manifest), description=description),
        train=dataclasses.replace(loop, seed=args.seed),
        output=str(Path(args.assets) / f"motion-{family}.safetensors"),
    ).validate()


def _pair_accuracy(result: TrainResult, pair: tuple[str, str]) -> float:
    """Accuracy on the clips of a pair, counting only the choice between its two classes."""
    labels = list(result.meta.labels)
    a, b = labels.index(pair[0]), labels.index(pair[1])
    confusion = result.metrics["confusion"]
    right = confusion[a][a] + confusion[b][b]
    total = right + confusion[a][b] + confusion[b][a]
    return right / total if total else float("nan")


def render_report(
    results: dict[str, TrainResult], timings: dict[str, float], argv: list[str]
) -> str:
    families = [f for f in FAMILIES if f in results]
    first = results[families[0]]
    # The dataset as train.py describes it (a checkpoint trained by hand records a path).
    m = next(
        (
            r.metrics
            for r in results.values()
            if r.metrics["dataset"].startswith("vidbatch.media.synth")
        ),
        first.metrics,
    )
    lines = [
        BEGIN,
        "",
        "## Shipped checkpoints: held-out results",
        "",
        f"Data: {m['dataset']}. Split by video (seed {m['seed']}): {m['train_videos']} training "
        f"videos ({m['train_clips']} clips), {m['heldout_videos']} held-out videos "
        f"({m['heldout_clips']} clips). Clip spec: {first.meta.clip.frames} frames at "
        f"{first.meta.clip.fps:g} fps, {first.meta.clip.size}x{first.meta.clip.size}.",
        "",
        "| family | model | held-out accuracy | params | checkpoint | epochs | train time | version |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for f in families:
        r = results[f]
        lines.append(
            f"| {f} | `{r.meta.name}` | **{r.metrics['heldout_accuracy']:.3f}** | "
            f"{r.metrics['params'] / 1e3:.0f}k | {r.size_bytes / 1e6:.2f} MB | {r.metrics['epochs']} | "
            f"{r.metrics['train_seconds']:.0f} s | `{r.version}` |"
        )
    lines += [
        "",
        "Per-class recall on held-out clips (pairs differ only in time order):",
        "",
        "| class | " + " | ".join(families) + " |",
        "| --- | " + " | ".join("---:" for _ in families) + " |",
    ]
    for label in first.meta.labels:
        recalls = [results[f].metrics["per_class_recall"].get(label) for f in families]
        cells = ["-" if r is None else f"{r:.2f}" for r in recalls]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Pair accuracy (of the clips of a pair that were given either of its two labels, the "
        "fraction given the right one; 0.5 = chance):",
        "",
        "| pair | " + " | ".join(families) + " |",
        "| --- | " + " | ".join("---:" for _ in families) + " |",
    ]
    for pair in PAIRS:
        cells = [f"{_pair_accuracy(results[f], pair):.2f}" for f in families]
        lines.append(f"| {pair[0]} / {pair[1]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reproduce (CPU only, nothing downloaded):",
        "",
        "```",
        "python jobs/train.py " + " ".join(argv),
        "```",
        "",
        f"Timings on this run ({os.cpu_count()} CPU cores, {platform.machine()}, torch "
        f"{torch.__version__.split('+')[0]}, no GPU): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + ".",
        "",
        END,
    ]
    return "\n".join(lines)


def write_report(
    path: Path, results: dict[str, TrainResult], timings: dict[str, float], argv: list[str]
) -> None:
    """Replace the results section of docs/models.md (or append it), keeping the prose."""
    replace_section(path, render_report(results, timings, argv), BEGIN, END, "# Models")


if __name__ == "__main__":
    raise SystemExit(main())
