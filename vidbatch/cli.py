"""The `vidbatch` command line: one verb per task, each with --help."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vidbatch.errors import ConfigError, IndexBusyError
from vidbatch.storage import StorageError


def _cmd_run(args: argparse.Namespace) -> int:
    from vidbatch.config import load_config
    from vidbatch.job.run import plan_run, run_job

    config = load_config(args.config, args.set)
    log = _logger(args)
    if args.dry_run:
        plan = plan_run(config, limit=args.limit, retry_failed=args.retry_failed)
        reasons = ", ".join(f"{n} {reason}" for reason, n in plan.reasons().items()) or "none"
        print(
            f"dry run: {plan.listed.num_rows} videos listed ({reasons}); {plan.todo.num_rows} to index"
        )
        print("models: " + ", ".join(f"{m.name}@{m.version}" for m in plan.models))
        if plan.changed:
            print("changed since the last run (re-indexes): " + ", ".join(plan.changed))
        return 0
    summary = run_job(
        config,
        limit=args.limit,
        retry_failed=args.retry_failed,
        log=log,
        show_progress=not args.quiet,
        verbose=args.verbose,
    )
    print(summary.line())
    if summary.over_budget(config.max_failed_fraction):
        by_stage = ", ".join(f"{k}: {v}" for k, v in sorted(summary.failures.items()))
        print(
            f"vidbatch: error: {summary.failed} of {summary.processed} videos processed failed "
            f"({by_stage}), more than max_failed_fraction={config.max_failed_fraction}; see "
            f"vidbatch query {config.output.uri} \"SELECT uri, error FROM videos WHERE status = 'failed'\"",
            file=sys.stderr,
        )
        return 1
    return 0


def _logger(args: argparse.Namespace):
    """Progress and notes on stderr, none with -q."""
    if getattr(args, "quiet", False):
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def _cmd_compact(args: argparse.Namespace) -> int:
    from vidbatch.index.store import IndexStore

    store = IndexStore(args.output, args.storage_options)
    if not store.exists():
        raise FileNotFoundError(f"no index at {args.output}")
    with store.lease(f"compact-{os.getpid()}"):
        report = store.compact(args.retention_hours)
    for name, figures in report.items():
        print(
            f"{name}: {figures['files_removed']} files compacted into {figures['files_added']}, "
            f"{figures['files_deleted']} deleted"
        )
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from vidbatch.media.synth import synthesize

    archive = synthesize(
        args.out,
        args.videos,
        seed=args.seed,
        codec=args.codec,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
    )
    print(f"wrote {len(archive.uris)} videos to {archive.videos_dir}; labels: {archive.labels_uri}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from vidbatch.training.train import load_train_config, train

    result = train(load_train_config(args.config))
    print(result)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from vidbatch.models import describe_model, list_models

    rows = [("name", "family", "task", "input", "weights", "about")]
    for spec in list_models():
        if spec.default_weights:
            info = describe_model(spec.name)
            weights = "shipped" if info.weights_shipped else "default missing"
        else:  # the input is in torchvision's record; the weights come by name or file
            info = describe_model(spec.name, "random")
            weights = "by name or file" if spec.weights_by_name else "file"
        rows.append((spec.name, spec.family, spec.task, info.input, weights, spec.summary))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    print(
        "\nweights: shipped = installed with the packages; by name = torchvision's "
        "(DEFAULT, ...) via the torch cache, or a file. Your own model: module:factory."
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from vidbatch.tools.evaluate import evaluate, format_report

    print(format_report(evaluate(args.predictions, args.truth, args.storage_options)))
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from vidbatch.tools.query import query, to_text
    from vidbatch.tools.search import write_results

    table = query(args.output, args.sql, args.storage_options, as_of=args.as_of)
    if args.format == "table":
        print(to_text(table))
        return 0
    write_results(table, args.format, args.out, args.output, args.storage_options)
    if args.out:  # without --out stdout holds the data and nothing else
        print(f"wrote {table.num_rows} rows to {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from vidbatch.tools.demo import run_demo

    return run_demo(args.dir, videos=args.videos)


def build_parser() -> argparse.ArgumentParser:
    from vidbatch.tools.report import add_report_parser
    from vidbatch.tools.search import add_results_arguments, add_search_parser, add_storage_options

    parser = argparse.ArgumentParser(prog="vidbatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vidbatch {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("run", help="index an archive as a config describes")
    p.add_argument("config")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.add_argument("--limit", type=int, help="index at most N videos (of those to process)")
    p.add_argument("--dry-run", action="store_true", help="list and decide without decoding")
    p.add_argument(
        "--retry-failed", action="store_true", help="retry failed videos past max_retries"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="Ray's own lines too")
    p.set_defaults(func=_cmd_run)

    p = verbs.add_parser("compact", help="optimize small files and vacuum old ones")
    p.add_argument("output", help="the job's output.uri")
    p.add_argument(
        "--retention-hours",
        type=float,
        default=168.0,
        help="keep files earlier versions need for this long (time travel); default 7 days",
    )
    add_storage_options(p)
    p.set_defaults(func=_cmd_compact)

    p = verbs.add_parser("synth", help="make a labeled synthetic archive")
    p.add_argument("out")
    p.add_argument("--videos", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codec", default="h264", help="h264, hevc, vp9, av1 or mpeg4")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.set_defaults(func=_cmd_synth)

    p = verbs.add_parser("train", help="train a model on a labeled manifest")
    p.add_argument("config")
    p.set_defaults(func=_cmd_train)

    p = verbs.add_parser("models", help="list the model registry")
    p.set_defaults(func=_cmd_models)

    p = verbs.add_parser("eval", help="accuracy / per-class recall, mAP against ground truth")
    p.add_argument("--predictions", required=True, help="an index output URI or a Parquet file")
    p.add_argument(
        "--truth", required=True, help="labels/boxes .parquet or .csv, or a synth archive folder"
    )
    add_storage_options(p, "fsspec options for both URIs")
    p.set_defaults(func=_cmd_eval)

    p = verbs.add_parser("query", help="SQL (DuckDB) over the output tables")
    p.add_argument("output", help="the job's output.uri")
    p.add_argument("sql")
    add_results_arguments(p)
    p.add_argument(
        "--as-of",
        metavar="VERSION|TIMESTAMP",
        help="read the index as it was: a videos-table version or a time (2026-11-30T08:00Z)",
    )
    p.set_defaults(func=_cmd_query)

    p = verbs.add_parser("demo", help="synthesize a small archive, index it, query it")
    p.add_argument("--dir", default="vidbatch-demo")
    p.add_argument("--videos", type=int, default=20)
    p.set_defaults(func=_cmd_demo)

    add_search_parser(verbs)
    add_report_parser(verbs)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidbatch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _error(exc: BaseException) -> str:
    """One line: the message with its library's details kept, lines joined."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"vidbatch: error: {text or type(exc).__name__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StorageError, IndexBusyError) as exc:  # nothing half-visible was left behind
        print(_error(exc), file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(_error(exc), file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a full disk: the message names the file
        print(_error(exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
