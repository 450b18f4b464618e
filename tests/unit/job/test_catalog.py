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
    assert [r.uri for r in refs] == [
        "s3://catalog-bucket/in/deep/y.mov",
        "s3://catalog-bucket/in/x 1.mp4",
    ]
    assert all(r.etag and r.size_bytes == video.stat().st_size for r in refs)


def test_one_object_under_several_spellings_is_listed_once(s3, s3_server, tmp_path):
    fs, options = s3
    make_bucket(s3_server, "spellings")
    video = media.counter_video(tmp_path / "c.mp4", seconds=1)
    fs.put(str(video), "spellings/in/a.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "uri\ns3://spellings/in/a.mp4\ns3://spellings//in/a.mp4\ns3://spellings/in/./a.mp4\n"
    )
    refs = list_videos(str(manifest), options)
    assert [r.uri for r in refs] == ["s3://spellings/in/a.mp4"]
    assert refs[0].error is None and refs[0].etag


def test_video_id_does_not_depend_on_the_time_zone(folder):
    import subprocess
    import sys

    script = (
        "import sys; from vidbatch.job.catalog import list_videos; "
        "r = list_videos(sys.argv[1])[0]; print(r.video_id, r.mtime)"
    )
    seen = set()
    for zone in ("UTC", "America/Los_Angeles", "Asia/Kolkata"):
        done = subprocess.run(
            [sys.executable, "-c", script, str(folder / "a.mp4")],
            env={**__import__("os").environ, "TZ": zone},
            capture_output=True,
            text=True,
            check=True,
        )
        seen.add(done.stdout.strip())
    assert len(seen) == 1 and seen.pop().endswith("+00:00")


def test_a_glob_lists_only_files_not_folders_or_manifests(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"x" * 10)
    (tmp_path / "folder.mp4").mkdir()  # a folder named like a video
    (tmp_path / "labels.parquet").write_bytes(b"x")
    (tmp_path / "manifest.csv").write_text("uri\n")
    assert [r.uri for r in list_videos(str(tmp_path / "*"))] == [str(tmp_path / "clip.mp4")]


def test_stored_uris_carry_no_credentials_but_decoding_keeps_them(tmp_path):
    from vidbatch.job.catalog import _make_ref

    signed = (
        "https://user:pa55word@cdn.example.com/v/a.mp4?X-Amz-Credential=AKIA%2Fx"
        "&X-Amz-Signature=abcdef&X-Amz-Date=20261130&quality=hd"
    )
    ref = _make_ref(signed, size_bytes=1)
    assert ref.uri == "https://cdn.example.com/v/a.mp4?quality=hd"
    assert ref.open_uri == signed.replace("https://user", "https://user")  # all of it, to open
    assert (
        "pa55word" not in ref.video_id and ref.video_id == _make_ref(ref.uri, size_bytes=1).video_id
    )
