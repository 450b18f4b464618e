"""vidbatch: index video archives with deep learning (Ray Data + PyAV + PyTorch -> Delta Lake).

From Python (a notebook, a scheduler)::

    import vidbatch

    summary = vidbatch.run("job.yaml", sampling__segment_seconds=60)
    index = vidbatch.open_index("s3://index/")            # the latest snapshot
    index.sql("SELECT label, count(*) FROM clips GROUP BY label").df()
    before = vidbatch.open_index("s3://index/", as_of=3)  # time travel
    before.table("clips")                                 # pyarrow.Table
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing vidbatch stays cheap: the heavy parts load when used
    import duckdb
    import pandas
    import pyarrow

    from vidbatch.config import JobConfig
    from vidbatch.job.run import RunSummary

__version__ = "0.1.0"
__all__ = ["Index", "__version__", "open_index", "run"]


def run(
    config: str | Path | Mapping[str, Any] | JobConfig,
    *,
    limit: int | None = None,
    retry_failed: bool = False,
    quiet: bool = True,
    **overrides: Any,
) -> RunSummary:
    """Run the indexing job; returns its summary (`summary.ok`, `.failed`, `.line()` ...).

    `config` is a YAML path, the same config as a dict, or a JobConfig. Keyword overrides
    name config keys with `__` between levels (`sampling__segment_seconds=60`,
    `incremental=False`), as `vidbatch run --set` does with dots. `quiet` (the default here)
    hides the progress lines the command line prints."""
    import yaml

    from vidbatch.config import JobConfig, apply_overrides, config_from_dict, load_config, to_dict
    from vidbatch.job.run import run_job

    sets = [
        f"{key.replace('__', '.')}={yaml.safe_dump(value).strip()}"
        for key, value in overrides.items()
    ]
    if isinstance(config, (str, Path)):
        job = load_config(config, sets)
    else:
        data = to_dict(config) if isinstance(config, JobConfig) else dict(config)
        job = config_from_dict(apply_overrides(yaml.safe_load(yaml.safe_dump(data)), sets))
    options = {"log": lambda message: None} if quiet else {}
    return run_job(job, limit=limit, retry_failed=retry_failed, show_progress=not quiet, **options)


class Index:
    """One snapshot of an index: every table as DuckDB SQL, Arrow or pandas."""

    def __init__(
        self,
        uri: str,
        storage_options: Mapping[str, Any] | None = None,
        as_of: int | str | datetime | None = None,
    ) -> None:
        from vidbatch.index.store import IndexStore

        self.uri = uri
        self._store = IndexStore(uri, storage_options)
        self._snapshot = self._store.snapshot(as_of)
        self._con: duckdb.DuckDBPyConnection | None = None

    @property
    def version(self) -> int | None:
        """The `videos` table version this snapshot is (what `as_of` takes)."""
        return self._snapshot.videos_version

    @property
    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the tables as views: videos, clips, detections, shots, runs."""
        if self._con is None:
            self._con = self._store.connect(snapshot=self._snapshot)
        return self._con

    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """A DuckDB relation: `.arrow()`, `.df()`, `.fetchall()` ..."""
        return self.duckdb.sql(query)

    def table(self, name: str, columns: list[str] | None = None) -> pyarrow.Table:
        return self._store.read(name, columns, self._snapshot)

    def df(self, name: str, columns: list[str] | None = None) -> pandas.DataFrame:
        return self.table(name, columns).to_pandas()

    def __repr__(self) -> str:
        return f"Index({self._store.uri!r}, version={self.version})"


def open_index(
    uri: str,
    *,
    as_of: int | str | datetime | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Index:
    """The index at `uri` as it is now, or `as_of` a `videos` table version or a time."""
    return Index(uri, storage_options, as_of)
