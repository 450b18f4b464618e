from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import job_config
from vidbatch.config import config_from_dict, load_config
from vidbatch.errors import ConfigError


def test_valid_config_with_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_config("/videos", "/index")))
    config = load_config(path, ["sampling.clips.fps=4", "models.0.top_k=2", "incremental=true"])
    assert config.sampling.clips.fps == 4 and config.models[0].top_k == 2 and config.incremental


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampling": {"clipz": {}}}, "unknown key 'sampling.clipz'"),
        ({"models": [{"name": "x", "wieghts": "a"}]}, "unknown key 'models[0].wieghts'"),
        ({"max_failed_fraction": 2}, "max_failed_fraction"),
        ({"sampling": {"segment_seconds": "long"}}, "sampling.segment_seconds"),
        ({"resources": {"actors": "many"}}, "resources.actors"),
        ({"models": []}, "models"),
    ],
)
def test_config_mistakes_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict({**job_config("/v", "/o"), **change})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vidbatch.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"sourse": {"uri": "/x"}}, "unknown key 'sourse'"),
        ({"source": {"uri": "/definitely/not/here"}}, "no such file, folder or prefix"),
        ({"models": [{"name": "no-such-model"}]}, "unknown model 'no-such-model'"),
        ({"models": [{"name": "motion-cnn", "weights": "/nope.safetensors"}]}, "/nope.safetensors"),
    ],
)
def test_cli_rejects_bad_config_in_one_line_before_ray(tmp_path, change, needle):
    (tmp_path / "videos").mkdir()
    config = {**job_config(str(tmp_path / "videos"), str(tmp_path / "out")), **change}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _cli("run", str(path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "ray" not in result.stderr.lower().replace("vidbatch", "")
    assert not (tmp_path / "out").exists()
