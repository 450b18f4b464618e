"""Cluster definitions: they parse, the launcher YAML passes Ray's own schema, the KubeRay
manifests are wired together (entrypoint files, service accounts, RBAC, ConfigMap, schedule),
and their logic holds: nodes boot a current GPU AMI, jobs wait for the GPUs they are sized for,
worker pods carry no Kubernetes rights, the RayJob has deadlines, the runtime env keeps
virtualenvs and build output out of the upload (packaged by Ray's own code), and the nightly
scripts do the right kubectl / ray calls, failures included (run against fakes)."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
CLUSTER_YAMLS = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])
# Never uploaded with the working dir, whatever the submitting client's Ray defaults are.
REQUIRED_EXCLUDES = {".git", ".venv", "venv", "__pycache__", "build", "*.egg-info"}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs(path)}


def of_kind(path: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Every document of one kind, by name."""
    return {d["metadata"]["name"]: d for d in docs(path) if d["kind"] == kind}


def wait_flag(command: str) -> int | None:
    """N of `--wait-for-gpus N` in a jobs/index_archive.py command line, None without it."""
    argv = shlex.split(command.replace("\\\n", " "))
    if "--wait-for-gpus" not in argv:
        return None
    return int(argv[argv.index("--wait-for-gpus") + 1])


def pod_specs(cluster_spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The head pod spec, then every worker group's pod spec."""
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def gpus(pod: dict[str, Any]) -> int:
    limits = pod["containers"][0]["resources"].get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def test_there_are_cluster_definitions() -> None:
    names = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER_YAMLS}
    assert {
        "aws.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/nightly-cronjob.yaml",
    } <= names
    assert (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_every_cluster_yaml_parses(path: Path) -> None:
    loaded = docs(path)
    assert loaded, f"{path} has no YAML documents"
    assert all(isinstance(d, dict) for d in loaded)


# --- Ray cluster launcher ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    (config,) = docs(CLUSTER / "aws.yaml")
    return config


def test_launcher_yaml_validates_against_rays_schema(launcher: dict[str, Any]) -> None:
    import jsonschema
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator_cls(schema).iter_errors(launcher)
    ]
    assert not errors, "\n".join(errors)


def test_launcher_schema_check_is_not_vacuous(launcher: dict[str, Any]) -> None:
    """The schema really constrains node types: a fractional GPU count is rejected."""
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    broken = json.loads(json.dumps(launcher))
    broken["available_node_types"]["gpu"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_launcher_has_cpu_head_decode_and_gpu_groups(launcher: dict[str, Any]) -> None:
    types = launcher["available_node_types"]
    assert launcher["provider"]["type"] == "aws"
    assert launcher["head_node_type"] in types
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != launcher["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    cpu = [t for t in workers.values() if t["resources"].get("GPU", 0) == 0]
    assert gpu and cpu, "need a GPU worker group and a CPU decode worker group"
    assert all(re.match(r"(g[4-6]|p[3-5])", t["node_config"]["InstanceType"]) for t in gpu)
    assert all(t["resources"].get("CPU", 0) > 0 for t in cpu)
    for t in workers.values():
        assert t.get("min_workers", 0) <= t.get("max_workers", launcher["max_workers"])
    # GPUs present at job start: `resources.actors: auto` counts them then.
    assert all(t.get("min_workers", 0) >= 1 for t in gpu)


GPU_AMI = re.compile(
    r"resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
    r"base-oss-nvidia-driver-gpu-ubuntu-(22|24)\.04/latest/ami-id"
)


def test_launcher_pins_a_current_gpu_ami(launcher: dict[str, Any]) -> None:
    """No node falls back to the launcher's default AMI (Ubuntu 18.04 DLAMI, a driver too old
    for L4 and CUDA 12.8): each names AWS's current GPU base AMI or a fixed image id."""
    for name, node_type in launcher["available_node_types"].items():
        image = str(node_type["node_config"].get("ImageId", ""))
        assert image.lower() not in ("", "latest_dlami"), f"{name}: launcher's default AMI"
        assert GPU_AMI.fullmatch(image) or re.fullmatch(r"ami-[0-9a-f]{8,17}", image), image


def launcher_gpus(launcher: dict[str, Any]) -> int:
    """GPUs present once every pinned worker has joined: min_workers x GPU per group."""
    return sum(
        t.get("min_workers", 0) * t["resources"].get("GPU", 0)
        for name, t in launcher["available_node_types"].items()
        if name != launcher["head_node_type"]
    )


def submit_commands(text: str) -> list[str]:
    """Every `jobs/index_archive.py` command line in a text (shell continuations joined)."""
    joined = re.sub(r"\\\n\s*(#\s*)?", " ", text)
    return [line for line in joined.splitlines() if "jobs/index_archive.py" in line]


def test_launcher_jobs_wait_for_the_gpu_workers(launcher: dict[str, Any]) -> None:
    """`ray up` returns before the GPU workers join: every documented submission to the launcher
    cluster waits for the GPUs aws.yaml pins (else `auto` sizing runs CPU-only)."""
    expected = launcher_gpus(launcher)
    assert expected >= 1
    header = (CLUSTER / "aws.yaml").read_text()
    commands = submit_commands(header)
    assert commands and all(wait_flag(c.lstrip("# ")) == expected for c in commands), commands
    script = (CLUSTER / "nightly-aws.sh").read_text()
    assert f"VIDBATCH_GPUS:-{expected}}}" in script
    readme = (CLUSTER / "README.md").read_text()
    launcher_part = readme.split("## Ray cluster launcher (AWS)")[1].split("\n## ")[0]
    commands = submit_commands(launcher_part)
    assert commands and all(wait_flag(c) == expected for c in commands), commands


def test_launcher_uses_instance_roles_token_auth_and_cuda_torch(launcher: dict[str, Any]) -> None:
    for name, t in launcher["available_node_types"].items():
        assert "Arn" in t["node_config"].get("IamInstanceProfile", {}), f"{name}: no instance role"
    text = (CLUSTER / "aws.yaml").read_text()
    assert "RAY_AUTH_MODE=token" in text
    assert any("~/.ray/auth_token" in k for k in launcher.get("file_mounts", {}))
    setup = " ".join(launcher.get("setup_commands", []))
    assert re.search(r"download\.pytorch\.org/whl/cu\d+", setup), "torch must be a CUDA build"
    assert ".venv" in launcher.get("rsync_exclude", []), "never sync the local venv"


CREDENTIAL_TEXT = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"aws_(secret_access_key|access_key_id|session_token)", re.IGNORECASE),
    re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?[0-9a-f]{16}", re.IGNORECASE),
]
SECRET_KEYS = {"key", "secret", "token", "password", "session_token"}
AWS_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def credential_findings(node: Any, path: str = "") -> list[str]:
    """Secrets in storage_options or AWS keys as literal env values, anywhere in a document."""
    found = []
    if isinstance(node, dict):
        if path.endswith("storage_options"):
            found += [f"{path}.{k}" for k in node if str(k).lower() in SECRET_KEYS]
        if node.get("name") in AWS_ENV and "value" in node:
            found.append(f"{path}: env {node['name']}")
        for k, v in node.items():
            found += credential_findings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += credential_findings(v, f"{path}[{i}]")
    return found


@pytest.mark.parametrize(
    "path",
    [*CLUSTER_YAMLS, *sorted((REPO / "jobs").rglob("*.yaml"))],
    ids=lambda p: p.relative_to(REPO).as_posix(),
)
def test_no_credentials_in_cluster_or_job_files(path: Path) -> None:
    text = path.read_text()
    for pattern in CREDENTIAL_TEXT:
        match = pattern.search(text)
        assert not match, f"{path}: looks like a credential: {match.group(0)!r}"
    for doc in docs(path):
        assert not credential_findings(doc), f"{path}: {credential_findings(doc)}"
        if isinstance(doc.get("runtimeEnvYAML"), str):  # nested YAML in a RayJob
            assert not credential_findings(yaml.safe_load(doc["runtimeEnvYAML"]))


# --- runtime env ---------------------------------------------------------------------------------


def runtime_envs() -> dict[str, dict[str, Any]]:
    rayjob = by_kind(KUBERAY / "rayjob.yaml")["RayJob"]
    return {
        "jobs/runtime_env.yaml": yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text()),
        "kuberay/rayjob.yaml": yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"]),
    }


@pytest.mark.parametrize("name", sorted(runtime_envs()))
def test_runtime_env_excludes_virtualenvs_and_build_output(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packaged by Ray's own code with its default excludes switched off (older clients have
    none; RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES='' removes them): the listed excludes alone
    keep every virtualenv, cache and build folder, at any depth, out of the upload."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    excludes = runtime_envs()[name]["excludes"]
    assert REQUIRED_EXCLUDES <= set(excludes)
    monkeypatch.setenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")
    tree = tmp_path / "checkout"
    kept = ["vidbatch/__init__.py", "jobs/index_archive.py", "jobs/configs/nightly-s3.yaml"]
    left_out = [
        ".venv/bin/python",
        "venv/lib/site.py",
        ".git/HEAD",
        "vidbatch/__pycache__/x.cpython-311.pyc",
        "build/lib/vidbatch/__init__.py",
        "vidbatch.egg-info/PKG-INFO",
        "tests/test_x.py",
    ]
    for relative in kept + left_out:
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_text("x")
    package = tmp_path / "package.zip"
    create_package(str(tree), package, include_gitignore=False, excludes=list(excludes))
    with zipfile.ZipFile(package) as archive:
        names = {n for n in archive.namelist() if not n.endswith("/")}
    assert set(kept) <= names
    assert not names & set(left_out), sorted(names & set(left_out))


# --- KubeRay -------------------------------------------------------------------------------------

EXPECTED_KINDS = {
    "raycluster.yaml": {
        "Namespace": "v1",
        "ServiceAccount": "v1",
        "RayCluster": "ray.io/v1",
    },
    "rayjob.yaml": {"RayJob": "ray.io/v1"},
    "nightly-cronjob.yaml": {
        "ServiceAccount": "v1",
        "Role": "rbac.authorization.k8s.io/v1",
        "RoleBinding": "rbac.authorization.k8s.io/v1",
        "CronJob": "batch/v1",
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
def test_kuberay_manifests_have_expected_kinds(name: str) -> None:
    loaded = docs(KUBERAY / name)
    assert {d["kind"]: d["apiVersion"] for d in loaded} == EXPECTED_KINDS[name]
    for d in loaded:
        meta = d["metadata"]
        assert meta.get("name") or meta.get("generateName")
        if d["kind"] != "Namespace":
            assert meta["namespace"] == "vidbatch"


def _check_ray_cluster_spec(spec: dict[str, Any]) -> None:
    assert spec["authOptions"]["mode"] == "token"
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)
    accounts = of_kind(KUBERAY / "raycluster.yaml", "ServiceAccount")
    for account in accounts.values():  # IRSA
        assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    pods = pod_specs(spec)
    assert all(p["serviceAccountName"] in accounts for p in pods)
    # KubeRay binds the autoscaler's rights (patch RayClusters, delete pods) to the head's
    # account: workers must not share it, nor hold any Kubernetes API token.
    head, workers = pods[0], pods[1:]
    assert all(p["serviceAccountName"] != head["serviceAccountName"] for p in workers)
    assert all(p.get("automountServiceAccountToken") is False for p in workers)
    assert any(gpus(p) >= 1 for p in workers), "no GPU worker group"
    assert any(gpus(p) == 0 for p in workers), "no CPU decode worker group"
    assert gpus(pods[0]) == 0 and spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for pod in pods:
        for container in pod["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def test_raycluster_wiring() -> None:
    _check_ray_cluster_spec(by_kind(KUBERAY / "raycluster.yaml")["RayCluster"]["spec"])


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return by_kind(KUBERAY / "rayjob.yaml")["RayJob"]


def test_rayjob_wiring(rayjob: dict[str, Any]) -> None:
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    _check_ray_cluster_spec(spec["rayClusterSpec"])
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    assert REQUIRED_EXCLUDES <= set(runtime_env.get("excludes", []))
    # Fixed GPU count: the job sizes its actor pool from the GPUs present when it starts.
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
    # The submitter talks to the Ray dashboard only.
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter.get("automountServiceAccountToken") is False


def test_rayjob_waits_for_the_gpus_it_is_sized_for(rayjob: dict[str, Any]) -> None:
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    pinned = sum(g["replicas"] * gpus(g["template"]["spec"]) for g in groups)
    assert pinned >= 1
    assert wait_flag(rayjob["spec"]["entrypoint"]) == pinned


def test_rayjob_has_deadlines(rayjob: dict[str, Any]) -> None:
    """A cluster that never comes up (no GPU capacity, a bad image) fails the RayJob within
    preRunningDeadlineSeconds instead of holding the nightly guard until activeDeadlineSeconds.
    The field name is KubeRay's (ray-operator/apis/ray/v1/rayjob_types.go, >= 1.6.0)."""
    spec = rayjob["spec"]
    pre, active = spec["preRunningDeadlineSeconds"], spec["activeDeadlineSeconds"]
    assert isinstance(pre, int) and isinstance(active, int)
    assert 0 < pre < active


def test_every_pod_account_exists_and_heads_have_their_own() -> None:
    accounts = of_kind(KUBERAY / "raycluster.yaml", "ServiceAccount")
    roles = {a["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] for a in accounts.values()}
    assert len(accounts) >= 2 and len(roles) == 1  # one IAM role, trusted for both accounts
    readme = (CLUSTER / "README.md").read_text()
    for name in accounts:
        assert f"system:serviceaccount:vidbatch:{name}" in readme  # the trust policy to write


def test_rayjob_entrypoint_references_repo_files(rayjob: dict[str, Any]) -> None:
    from vidbatch.config import load_config

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/index_archive.py"]
    assert (REPO / argv[1]).is_file()
    configs = [a for a in argv[2:] if a.endswith((".yaml", ".yml"))]
    assert configs == ["jobs/configs/nightly-s3.yaml"]
    for config in configs:
        assert (REPO / config).is_file()
        load_config(REPO / config)  # a valid job config, not just a file


# --- nightly CronJob ---------------------------------------------------------------------------

_CRON_FIELDS = [  # (low, high, names)
    (0, 59, []),
    (0, 23, []),
    (1, 31, []),
    (1, 12, "jan feb mar apr may jun jul aug sep oct nov dec".split()),
    (0, 7, "sun mon tue wed thu fri sat".split()),
]


def _cron_value(text: str, low: int, high: int, names: list[str]) -> int:
    if text.lower() in names:
        return names.index(text.lower()) + (low if low == 1 else 0)
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(text)
    return int(text)


def valid_cron(expression: str) -> bool:
    """A standard 5-field cron expression: lists, ranges, steps, names; no @macros."""
    fields = expression.split()
    if len(fields) != 5:
        return False
    try:
        for field, (low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
            for item in field.split(","):
                base, _, step = item.partition("/")
                if step and (not step.isdigit() or int(step) < 1):
                    return False
                if base == "*":
                    continue
                start, _, end = base.partition("-")
                a = _cron_value(start, low, high, names)
                if end and _cron_value(end, low, high, names) < a:
                    return False
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("expression", "ok"),
    [
        ("30 2 * * *", True),
        ("*/15 0-6 1,15 * mon-fri", True),
        ("0 3 * jan-mar 0", True),
        ("60 2 * * *", False),
        ("30 2 * *", False),
        ("30 2 * * * *", False),
        ("30 25 * * *", False),
        ("*/0 * * * *", False),
        ("@daily", False),
    ],
)
def test_cron_checker(expression: str, ok: bool) -> None:
    assert valid_cron(expression) is ok


@pytest.fixture(scope="module")
def nightly() -> dict[str, dict[str, Any]]:
    return by_kind(KUBERAY / "nightly-cronjob.yaml")


def launch_container(nightly: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod = nightly["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def launch_script(nightly: dict[str, dict[str, Any]]) -> str:
    return launch_container(nightly)["args"][-1]


def test_launch_script_fails_on_a_failed_pipe(nightly: dict[str, dict[str, Any]]) -> None:
    """Without pipefail, `kubectl get ... | awk` reads a failed kubectl as "nothing running"."""
    container = launch_container(nightly)
    argv = [*container["command"], *container["args"][:-1]]
    shell_opts = " ".join(argv[1:])
    assert "pipefail" in shell_opts or "set -o pipefail" in launch_script(nightly)
    assert "-e" in shell_opts or re.search(r"-\w*e\w*\b", shell_opts)


def test_cronjob_schedule_and_rbac(nightly: dict[str, dict[str, Any]]) -> None:
    cron = nightly["CronJob"]["spec"]
    assert valid_cron(cron["schedule"]), cron["schedule"]
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    account = nightly["ServiceAccount"]["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    binding = nightly["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": nightly["Role"]["metadata"]["name"],
    }
    subject = {"kind": "ServiceAccount", "name": account, "namespace": "vidbatch"}
    assert subject in binding["subjects"]
    rules = nightly["Role"]["rules"]
    assert any(
        "ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"]
        for r in rules
    )
    verbs = {v for r in rules for v in r["verbs"]}
    assert {"create", "get", "list", "watch", "delete"} <= verbs
    assert all(r["resources"] == ["rayjobs"] for r in rules), "launcher needs nothing else"


def test_cronjob_creates_the_rayjob_from_its_configmap(
    nightly: dict[str, dict[str, Any]], rayjob: dict[str, Any]
) -> None:
    pod = nightly["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    script = launch_script(nightly)
    assert f"create -f {mount['mountPath']}/rayjob.yaml" in script
    # The README's command builds this ConfigMap from rayjob.yaml under that key.
    readme = (CLUSTER / "README.md").read_text()
    assert f"create configmap {volume['configMap']['name']}" in readme
    assert "--from-file=rayjob.yaml=cluster/kuberay/rayjob.yaml" in readme
    # `kubectl create` each night needs a fresh name; the script finds runs by this label.
    assert rayjob["metadata"]["generateName"] and "name" not in rayjob["metadata"]
    label = "app.kubernetes.io/name=" + rayjob["metadata"]["labels"]["app.kubernetes.io/name"]
    assert label in script


FAKE_KUBECTL = """#!/bin/sh
echo "$*" >> "$KUBECTL_LOG"
case "$*" in
  *jsonpath*) [ -n "${FAKE_GET_FAILS:-}" ] && { echo "connection refused" >&2; exit 1; }
              cat "$FAKE_STATUS" ;;
  *"--sort-by"*) cat "$FAKE_NAMES" ;;
esac
"""


def run_launch_script(
    tmp_path: Path,
    nightly: dict[str, dict[str, Any]],
    statuses: str,
    names: list[str],
    *,
    get_fails: bool = False,
) -> tuple[int, list[str]]:
    """Run the CronJob's script with its own command line and a fake kubectl that records its
    arguments; returns the exit status and the kubectl calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "status").write_text(statuses)
    (tmp_path / "names").write_text("".join(f"{n}\n" for n in names))
    log = tmp_path / "kubectl.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "KUBECTL_LOG": str(log),
        "FAKE_STATUS": str(tmp_path / "status"),
        "FAKE_NAMES": str(tmp_path / "names"),
    }
    if get_fails:
        env["FAKE_GET_FAILS"] = "1"
    container = launch_container(nightly)
    done = subprocess.run(
        [*container["command"], *container["args"]], env=env, timeout=30, capture_output=True
    )
    return done.returncode, log.read_text().splitlines() if log.exists() else []


def creates(calls: list[str]) -> list[str]:
    return [c for c in calls if " create " in c]


def test_launch_script_creates_tonights_rayjob_and_prunes_old_ones(
    tmp_path: Path, nightly: dict[str, dict[str, Any]]
) -> None:
    old = [f"rayjob.ray.io/vidbatch-nightly-{i:02d}" for i in range(10)]  # oldest first
    code, calls = run_launch_script(tmp_path, nightly, "a Complete\nb Failed\n", old)
    assert code == 0
    assert any(c.startswith("-n vidbatch create -f /etc/vidbatch/rayjob.yaml") for c in calls)
    deletes = [c for c in calls if " delete" in c]
    assert deletes == ["-n vidbatch delete " + " ".join(old[:3])]  # keeps the newest 7


@pytest.mark.parametrize("status", ["Running", "Initializing", "Retrying", "Waiting", ""])
def test_launch_script_skips_while_a_run_is_in_progress(
    tmp_path: Path, nightly: dict[str, dict[str, Any]], status: str
) -> None:
    code, calls = run_launch_script(
        tmp_path, nightly, f"a Complete\nb {status}\n", ["rayjob.ray.io/b"]
    )
    assert code == 0
    assert not [c for c in calls if " create " in c or " delete" in c], calls


def test_launch_script_runs_after_a_rayjob_that_failed_validation(
    tmp_path: Path, nightly: dict[str, dict[str, Any]]
) -> None:
    """A RayJob the operator refused (ValidationFailed) never runs: it must not block every
    night after it."""
    code, calls = run_launch_script(
        tmp_path, nightly, "a Complete\nb ValidationFailed\n", ["rayjob.ray.io/b"]
    )
    assert code == 0 and creates(calls), calls


def test_launch_script_fails_when_kubectl_get_fails(
    tmp_path: Path, nightly: dict[str, dict[str, Any]]
) -> None:
    """An unreachable API server is a failed pod (the Job retries), not "nothing running"."""
    code, calls = run_launch_script(tmp_path, nightly, "", [], get_fails=True)
    assert code != 0
    assert not creates(calls), calls


# --- the launcher's nightly script -------------------------------------------------------------

FAKE_RAY = """#!/bin/sh
echo "$*" >> "$RAY_LOG"
case "$1" in
  up) [ -n "${FAKE_UP_FAILS:-}" ] && exit 3 ;;
  exec) [ -n "${FAKE_JOB_FAILS:-}" ] && exit 4 ;;
esac
exit 0
"""


def run_nightly_aws(tmp_path: Path, **fail: str) -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ray = bin_dir / "ray"
    ray.write_text(FAKE_RAY)
    ray.chmod(ray.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "ray.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RAY_LOG": str(log),
        **fail,
    }
    env.pop("VIDBATCH_GPUS", None)
    done = subprocess.run(
        ["bash", str(CLUSTER / "nightly-aws.sh")], env=env, timeout=30, capture_output=True
    )
    return done.returncode, log.read_text().splitlines() if log.exists() else []


def test_nightly_aws_runs_the_job_after_the_gpus_and_always_takes_the_cluster_down(
    tmp_path: Path, launcher: dict[str, Any]
) -> None:
    code, calls = run_nightly_aws(tmp_path)
    assert code == 0
    assert [c.split()[0] for c in calls] == ["up", "exec", "down"]
    assert calls[0] == "up -y cluster/aws.yaml" and calls[-1] == "down -y cluster/aws.yaml"
    job = calls[1]
    assert wait_flag(job.split("-- ", 1)[1]) == launcher_gpus(launcher)
    assert "jobs/configs/nightly-s3.yaml" in job and "--runtime-env jobs/runtime_env.yaml" in job


@pytest.mark.parametrize(("fail", "code"), [("FAKE_JOB_FAILS", 4), ("FAKE_UP_FAILS", 3)])
def test_nightly_aws_takes_the_cluster_down_after_a_failure(
    tmp_path: Path, fail: str, code: int
) -> None:
    returned, calls = run_nightly_aws(tmp_path, **{fail: "1"})
    assert returned == code  # the job's (or ray up's) status
    assert calls[-1] == "down -y cluster/aws.yaml"
    assert not (fail == "FAKE_UP_FAILS" and any(c.startswith("exec") for c in calls))


# --- jobs/index_archive.py: waiting for the GPUs -----------------------------------------------


@pytest.fixture(scope="module")
def index_archive() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "index_archive", REPO / "jobs" / "index_archive.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeCluster:
    """cluster_resources() that gains one GPU per poll after `join_after` polls, and a clock
    that advances by each sleep."""

    def __init__(self, join_after: int, gpus: int) -> None:
        self.polls, self.join_after, self.gpus, self.now = 0, join_after, gpus, 0.0

    def resources(self) -> dict[str, float]:
        self.polls += 1
        have = max(0, min(self.gpus, self.polls - self.join_after))
        return {"CPU": 32.0, **({"GPU": float(have)} if have else {})}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_for_gpus_returns_once_they_have_joined(index_archive: Any) -> None:
    cluster, notes = FakeCluster(join_after=3, gpus=2), []
    waited = index_archive.wait_for_gpus(
        2,
        600,
        cluster.resources,
        poll_s=5,
        clock=cluster.clock,
        sleep=cluster.sleep,
        log=notes.append,
    )
    assert cluster.polls == 5 and waited == 20
    assert notes and "2 GPUs present" in notes[-1]


def test_wait_for_gpus_times_out_with_one_line_saying_what_is_there(index_archive: Any) -> None:
    cluster = FakeCluster(join_after=10**9, gpus=2)
    with pytest.raises(index_archive.GpuWaitTimeout) as raised:
        index_archive.wait_for_gpus(
            2,
            120,
            cluster.resources,
            poll_s=5,
            clock=cluster.clock,
            sleep=cluster.sleep,
            log=lambda message: None,
        )
    message = str(raised.value)
    assert "\n" not in message
    assert "2 GPUs" in message and "has 0" in message and "CPU 32" in message
    assert 120 <= cluster.now <= 125


def test_index_archive_splits_its_flags_from_vidbatch_runs(index_archive: Any) -> None:
    ours, rest = index_archive.parse(
        ["--wait-for-gpus", "2", "--wait-timeout", "60", "c.yaml", "--set", "a.b=1", "--limit", "3"]
    )
    assert (ours.wait_for_gpus, ours.wait_timeout) == (2, 60.0)
    assert rest == ["c.yaml", "--set", "a.b=1", "--limit", "3"]
    ours, rest = index_archive.parse(["c.yaml"])
    assert ours.wait_for_gpus == 0 and rest == ["c.yaml"]


def test_index_archive_reports_a_bad_config_before_waiting(tmp_path: Path) -> None:
    """A wrong key fails at once with vidbatch's one-line error, not after the GPU wait."""
    config = tmp_path / "job.yaml"
    config.write_text(
        "source: {uri: videos/}\noutput: {uri: index/}\nmodels: [{name: motion-cnn}]\n"
        "resorces: {actors: 2}\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "index_archive.py"),
            "--wait-for-gpus",
            "4",
            "--wait-timeout",
            "600",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "resorces" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "waiting for GPUs" not in done.stderr
