from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_bucket
from tests.support import media
from vidbatch.errors import ConfigError
from vidbatch.job.catalog import list_videos


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["a.mp4", "sub/b.webm", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x" * 10)
    return tmp_path


def test_folder_lists_videos_recursively_sorted(folder):
    refs = list_videos(str(folder))
    assert [r.uri for r in refs] == [str(folder / "a.mp4"), str(folder / "sub/b.webm")]
    assert all(r.size_bytes == 10 and r.mtime for r in refs)


def test_glob_and_limit(folder):
    assert [r.uri for r in list_videos(str(folder / "*.mp4"))] == [str(folder / "a.mp4")]
    assert len(list_videos(str(folder), limit=1)) == 1


def test_a_folder_named_like_a_pattern_is_a_folder(tmp_path):
    folder = tmp_path / "shoots [2024] take?"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"x" * 10)
    (tmp_path / "shoots 2 take1").mkdir()  # what the pattern would match instead
    (tmp_path / "shoots 2 take1" / "b.mp4").write_bytes(b"x" * 10)
    assert [r.uri for r in list_videos(str(folder))] == [str(folder / "a.mp4")]


def test_manifest_names_missing_files_as_errors(folder, tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [str(folder / "a.mp4"), str(folder / "gone.mp4")]}), manifest)
    refs = {r.uri: r for r in list_videos(str(manifest))}
    assert refs[str(folder / "a.mp4")].error is None
    assert refs[str(folder / "gone.mp4")].error.startswith("catalog: FileNotFoundError")


def test_video_id_changes_with_content(folder):
    before = list_videos(str(folder / "a.mp4"))[0]
    (folder / "a.mp4").write_bytes(b"y" * 11)
    after = list_videos(str(folder / "a.mp4"))[0]
    assert before.video_id != after.video_id and len(before.video_id) == 20


def test_missing_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file, folder or prefix"):
        list_videos(str(tmp_path / "nope"))


def test_s3_prefix_with_etags(s3, s3_server, tmp_path):
    fs, options = s3
    make_bucket(s3_server, "catalog-bucket")
    video = media.counter_video(tmp_path / "c.mp4", seconds=1)
    fs.put(str(video), "catalog-bucket/in/x 1.mp4")
    fs.put(str(video), "catalog-bucket/in/deep/y.mov")
    fs.pipe("catalog-bucket/in/readme.txt", b"hi")
    refs = list_videos("s3://catalog-bucket/in/", options)
    assert [r.uri for r in refs] == ["s3://catalog-bucket/in/deep/y.mov", "s3://catalog-bucket/in/x 1.mp4"]
    assert all(r.etag and r.size_bytes == video.stat().st_size for r in refs)
