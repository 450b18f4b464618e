"""The Python API a notebook uses: vidbatch.run and vidbatch.open_index."""

from __future__ import annotations

import shutil

import yaml

import vidbatch
from tests.conftest import job_config


def test_run_and_open_index_from_python(ray_session, tmp_path, small_archive):
    assert {"run", "open_index", "Index", "__version__"} <= set(dir(vidbatch))
    source = tmp_path / "videos"
    source.mkdir()
    for uri in small_archive.uris[:2]:
        shutil.copy(uri, source)
    out = tmp_path / "index"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_config(str(source), str(out), incremental=True)))

    first = vidbatch.run(path, models=[{"name": "motion-cnn", "top_k": 3}])
    assert (first.ok, first.failed) == (2, 0)
    index = vidbatch.open_index(str(out))
    before = index.version
    counts = index.sql(
        "SELECT count(DISTINCT uri) AS videos, count(*) AS clips FROM clips"
    ).fetchall()
    assert counts[0][0] == 2 and counts[0][1] == first.clips
    assert len(index.df("videos")) == 2 and index.table("clips").num_rows == first.clips

    # Keyword overrides with `__` between levels; a dict config works as a path does.
    second = vidbatch.run(
        job_config(str(source), str(out), incremental=True),
        models=[{"name": "motion-cnn", "top_k": 2}],
        resources__commit_every=1,
    )
    assert second.ok == 2
    now = vidbatch.open_index(str(out))
    assert now.version > before
    assert {len(labels) for labels in now.table("clips").column("labels").to_pylist()} == {2}
    old = vidbatch.open_index(str(out), as_of=before)
    assert {len(labels) for labels in old.table("clips").column("labels").to_pylist()} == {3}
    assert "version=" in repr(old)
