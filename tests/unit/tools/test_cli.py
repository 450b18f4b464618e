"""What the CLI prints when something is wrong: one line on stderr that keeps what the library
underneath said (YAML's line and column, the file an OS error is about), and an exit code."""

from __future__ import annotations

import pytest

from tests.unit.tools.test_query import video, write_index
from vidbatch.cli import main

CONFIG = """\
source:
  uri: /videos
output:
  uri: /index
 models: [{name: motion-cnn}]
"""


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err.strip()


def test_a_yaml_mistake_names_the_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(CONFIG)
    assert main(["run", str(path), "--dry-run"]) == 2
    err = _error(capsys)
    assert err.startswith(f"vidbatch: error: {path}:5:2: not valid YAML: expected <block end>")
    assert "while parsing a block mapping at 1:1" in err


def test_an_unclosed_bracket_points_at_where_it_opened(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("source: {uri: /videos\noutput: {uri: /index}\n")
    assert main(["run", str(path), "--dry-run"]) == 2
    err = _error(capsys)
    assert f"{path}:2:7: not valid YAML" in err and "flow mapping at 1:9" in err


def test_a_config_that_is_not_a_mapping_says_so(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("- source\n- output\n")
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "expected a mapping of keys (source:, output:, models: ...), got list" in _error(capsys)


def test_a_set_value_that_is_not_yaml_says_so(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("source: {uri: /v}\noutput: {uri: /o}\nmodels: [{name: motion-cnn}]\n")
    assert main(["run", str(path), "--dry-run", "--set", "models=[oops"]) == 2
    assert "--set: not valid YAML: expected ',' or ']'" in _error(capsys)


def test_an_os_error_names_the_file(tmp_path, capsys):
    index = write_index(str(tmp_path / "index"), videos=[video("/nowhere/a.mp4")])
    assert main(["report", index, "--html", "/dev/null/report.html"]) == 1
    err = _error(capsys)
    assert err.startswith("vidbatch: error: cannot write /dev/null/report.html: FileExistsError")


def test_version_needs_no_verb(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("vidbatch ")
