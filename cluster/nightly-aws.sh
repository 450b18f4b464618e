#!/usr/bin/env bash
# The nightly run on the Ray cluster launcher (AWS), from cron on an operations host that has
# this checkout, Ray 2.60 and the auth token (cluster/README.md):
#     30 2 * * *  cd /path/to/vidbatch && cluster/nightly-aws.sh >> nightly.log 2>&1
# Brings the cluster up, runs the job once the GPU workers have joined, and always takes the
# cluster down again (GPU nodes bill while idle). Exits with the job's status.
#   VIDBATCH_CONFIG  job config (default jobs/configs/nightly-s3.yaml)
#   VIDBATCH_GPUS    GPUs to wait for: the gpu group's min_workers x GPU in aws.yaml (default 2)
#   VIDBATCH_WAIT_S  how long to wait for them (default 1800)
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=token
cluster=cluster/aws.yaml
config=${VIDBATCH_CONFIG:-jobs/configs/nightly-s3.yaml}
gpus=${VIDBATCH_GPUS:-2}
wait_s=${VIDBATCH_WAIT_S:-1800}

trap 'ray down -y "$cluster"' EXIT   # also after a failed run or Ctrl-C
ray up -y "$cluster"                  # returns when the head is up, before the GPU workers
# `ray up` synced this checkout to ~/vidbatch on the head; submit from there. The job waits
# for the GPUs itself: sized without them it would run CPU-only while they are paid for.
ray exec "$cluster" "cd ~/vidbatch && ray job submit --working-dir . \
    --runtime-env jobs/runtime_env.yaml -- python jobs/index_archive.py \
    --wait-for-gpus $gpus --wait-timeout $wait_s $config"
