"""Ray Job entrypoint for indexing: the same code path as `vidbatch run`.

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
        python jobs/index_archive.py [--wait-for-gpus N [--wait-timeout S]] \
        jobs/configs/nightly-s3.yaml [--set key=value ...]

Inside a Ray Job, RAY_ADDRESS is set, so the pipeline joins the cluster instead of starting one.

`--wait-for-gpus N` waits until the cluster has N GPUs before the run starts. A job submitted
right after `ray up` (or while an autoscaler is still adding GPU nodes) would otherwise size
its workers (`resources.actors: auto`) from the GPUs present at that moment, none, and run
CPU-only while the GPU nodes are paid for. The config is checked first, so a wrong key fails
at once, not after the wait; at the timeout the job fails with one line saying what is there.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from the working dir

from vidbatch.cli import main  # noqa: E402

POLL_S = 5.0
LOG_EVERY_S = 60.0


class GpuWaitTimeout(RuntimeError):
    """The cluster did not reach the expected GPU count in time."""


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """This script's own flags, and the rest for `vidbatch run`."""
    parser = argparse.ArgumentParser(
        prog="jobs/index_archive.py",
        description="Run `vidbatch run` as a Ray Job, optionally after the GPUs have joined.",
        allow_abbrev=False,  # never take a prefix of a `vidbatch run` flag as one of these
        add_help=False,  # --help goes on to `vidbatch run --help`
    )
    parser.add_argument("--wait-for-gpus", type=int, default=0, metavar="N")
    parser.add_argument("--wait-timeout", type=float, default=1800.0, metavar="SECONDS")
    ours, rest = parser.parse_known_args(list(argv))
    if ours.wait_for_gpus < 0:
        parser.error(f"--wait-for-gpus {ours.wait_for_gpus}: must be >= 0")
    if ours.wait_timeout <= 0:
        parser.error(f"--wait-timeout {ours.wait_timeout:g}: must be > 0")
    return ours, rest


def wait_for_gpus(
    expected: int,
    timeout_s: float,
    resources: Callable[[], Mapping[str, float]],
    *,
    poll_s: float = POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> float:
    """Poll the cluster's resources until it has `expected` GPUs; returns the seconds waited.
    Raises GpuWaitTimeout (one line: what the cluster has) after `timeout_s`."""
    started = clock()
    last_log = started
    while True:
        have = dict(resources())
        gpus = float(have.get("GPU", 0))
        waited = clock() - started
        if gpus >= expected:
            if waited >= poll_s:
                log(f"{gpus:g} GPUs present after {waited:.0f} s; starting the run")
            return waited
        if waited >= timeout_s:
            raise GpuWaitTimeout(
                f"waited {waited:.0f} s for {expected} GPUs, the cluster has {gpus:g} "
                f"(CPU {float(have.get('CPU', 0)):g}): are the GPU workers up? (`ray status`; "
                "raise --wait-timeout, or size explicitly with --set resources.actors=N "
                "--set resources.gpus_per_actor=1)"
            )
        if clock() - last_log >= LOG_EVERY_S:
            log(f"waiting for GPUs: {gpus:g} of {expected} after {waited:.0f} s")
            last_log = clock()
        sleep(poll_s)


def _check_config(rest: Sequence[str]) -> int | None:
    """Validate the job config before waiting (a wrong key fails now); the exit code of
    `vidbatch run` when it is wrong, else None."""
    from vidbatch.cli import build_parser
    from vidbatch.config import load_config
    from vidbatch.errors import ConfigError

    try:
        args = build_parser().parse_args(["run", *rest])
    except SystemExit as exc:  # argparse already printed the usage error
        return int(exc.code or 0)
    try:
        load_config(args.config, args.set)
    except (ConfigError, FileNotFoundError, ValueError, OSError):
        return main(["run", *rest])  # prints the one-line error and gives its exit code
    return 0 if args.dry_run else None


def run(argv: Sequence[str]) -> int:
    ours, rest = parse(argv)
    if ours.wait_for_gpus and not {"-h", "--help"} & set(rest):
        checked = _check_config(rest)
        if checked is not None and checked != 0:
            return checked
        if checked is None:  # a real run (not --dry-run): it needs the GPUs
            from vidbatch.job.ray import cluster_resources, start_ray

            start_ray()
            try:
                wait_for_gpus(ours.wait_for_gpus, ours.wait_timeout, cluster_resources)
            except GpuWaitTimeout as exc:
                print(f"vidbatch: error: {exc}", file=sys.stderr)
                return 1
    return main(["run", *rest])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
