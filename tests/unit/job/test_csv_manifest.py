"""A CSV manifest as the source (README: "a manifest (.parquet/.csv with a `uri` column)"):
its `uri` column lists the videos, locally and on S3 (moto); other columns are ignored."""

from __future__ import annotations

import csv
import io

import pytest

from tests.conftest import make_bucket
from tests.support import media
from vidbatch.errors import ConfigError
from vidbatch.job.catalog import list_videos


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    """CSV as a spreadsheet writes it: fields with a comma or a quote are quoted."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@pytest.fixture
def videos(tmp_path):
    """Three real videos of different sizes, one with a comma and spaces in its name."""
    folder = tmp_path / "videos"
    folder.mkdir()
    made = {}
    for name, seconds in (("a.mp4", 1), ("b, take 2.mp4", 2), ("c.mp4", 3)):
        path = media.counter_video(folder / name, seconds=seconds)
        made[name] = (str(path), path.stat().st_size)
    assert len({size for _, size in made.values()}) == 3
    return made


def test_local_csv_manifest_lists_its_uri_column(videos, tmp_path):
    (a, a_size), (b, b_size), (c, c_size) = videos.values()
    missing = str(tmp_path / "videos" / "gone.mp4")
    manifest = tmp_path / "manifest.csv"
    # Column order, extra columns and repeats do not matter; listing is sorted by URI.
    manifest.write_text(
        csv_text(
            ["label", "uri", "note"],
            [["x", c, "third"], ["y", a, ""], ["z", b, "has, commas"], ["x", missing, ""]]
            + [["y", a, "again"]],
        )
    )
    refs = list_videos(str(manifest))
    assert [r.uri for r in refs] == sorted([a, b, c, missing])
    by_uri = {r.uri: r for r in refs}
    assert [by_uri[u].size_bytes for u in (a, b, c)] == [a_size, b_size, c_size]
    assert all(by_uri[u].error is None and by_uri[u].mtime for u in (a, b, c))
    assert by_uri[missing].error.startswith("catalog: FileNotFoundError")
    assert [r.uri for r in list_videos(str(manifest), limit=2)] == sorted([a, b, c, missing])[:2]


def test_csv_manifest_without_a_uri_column_is_a_config_error(tmp_path, videos):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(csv_text(["path", "label"], [[p, "x"] for p, _ in videos.values()]))
    with pytest.raises(ConfigError, match="no 'uri' column") as info:
        list_videos(str(manifest))
    assert "\n" not in str(info.value)


def test_csv_manifest_on_s3_lists_s3_videos_with_etags(s3, s3_server, videos):
    fs, options = s3
    make_bucket(s3_server, "csv-manifest")
    uris = {}
    for name, (path, size) in videos.items():
        fs.put(path, f"csv-manifest/videos/{name}")
        uris[f"s3://csv-manifest/videos/{name}"] = size
    missing = "s3://csv-manifest/videos/gone.mp4"
    fs.pipe(
        "csv-manifest/lists/tonight.csv",
        csv_text(["uri"], [[u] for u in [*uris, missing]]).encode(),
    )
    refs = list_videos("s3://csv-manifest/lists/tonight.csv", options)
    assert [r.uri for r in refs] == sorted([*uris, missing])
    by_uri = {r.uri: r for r in refs}
    for uri, size in uris.items():
        info = fs.info(uri)
        assert by_uri[uri].error is None and by_uri[uri].size_bytes == size
        assert by_uri[uri].etag == info["ETag"].strip('"')
    assert by_uri[missing].error.startswith("catalog: ")
    assert by_uri[missing].size_bytes == 0


def test_local_csv_manifest_can_name_s3_videos(s3, s3_server, videos, tmp_path):
    """A manifest kept on disk that lists objects: the source's storage_options reach them."""
    fs, options = s3
    make_bucket(s3_server, "csv-remote-videos")
    (path, size) = videos["a.mp4"]
    fs.put(path, "csv-remote-videos/a.mp4")
    manifest = tmp_path / "remote.csv"
    manifest.write_text(csv_text(["uri"], [["s3://csv-remote-videos/a.mp4"]]))
    (ref,) = list_videos(str(manifest), options)
    assert (ref.uri, ref.size_bytes, ref.error) == ("s3://csv-remote-videos/a.mp4", size, None)
    assert ref.etag
