"""Storage URLs -> pyarrow filesystems and paths, whole-file helpers, and Petastorm's view of them.

S3 filesystems are only built, never contacted: their endpoint and scheme are read back from the
filesystem object itself."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from ebbtide import storage
from ebbtide.storage import StorageError


@pytest.fixture(autouse=True)
def no_endpoint_env(monkeypatch):
    for k in storage.ENDPOINT_ENV + ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)


def _s3_settings(filesystem) -> dict:
    assert isinstance(filesystem, pafs.S3FileSystem)
    return filesystem.__reduce__()[1][0]  # the constructor's arguments, as pyarrow pickles it


@pytest.mark.parametrize("url, path", [
    ("/data/w/t/part-0.parquet", "/data/w/t/part-0.parquet"),
    ("file:/data/w/t/split=train/part-0.parquet", "/data/w/t/split=train/part-0.parquet"),
    ("file:///data/w/a%20b/part-0.parquet", "/data/w/a b/part-0.parquet"),
    ("file://localhost/data/x", "/data/x"),
    ("dbfs:/ebbtide/warehouse/t/part-0.parquet", "/dbfs/ebbtide/warehouse/t/part-0.parquet"),
    ("dbfs:///ebbtide/x", "/dbfs/ebbtide/x"),
    ("dbfs:/Volumes/main/ebbtide/files/checkpoints", "/Volumes/main/ebbtide/files/checkpoints"),
    ("/Volumes/main/ebbtide/files/x", "/Volumes/main/ebbtide/files/x"),
])
def test_local_and_fuse_paths(url, path):
    filesystem, got = storage.filesystem_and_path(url)
    assert isinstance(filesystem, pafs.LocalFileSystem) and got == path
    assert storage.local_path(url) == path and storage.is_local(url)


def test_a_relative_path_is_taken_from_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.filesystem_and_path("t/x.parquet")[1] == str(tmp_path / "t" / "x.parquet")


def test_a_file_url_of_another_host_is_refused():
    with pytest.raises(StorageError, match="another host"):
        storage.filesystem_and_path("file://otherhost/data/x")


@pytest.mark.parametrize("scheme", ["s3", "s3a", "s3n"])
def test_s3_urls_take_the_spark_endpoint(scheme):
    opts = {"fs.s3a.endpoint": "http://127.0.0.1:9000", "fs.s3a.endpoint.region": "eu-west-1"}
    filesystem, path = storage.filesystem_and_path(f"{scheme}://bucket/ebbtide/warehouse/t/split%3Dx/part-0.parquet", opts)
    assert path == "bucket/ebbtide/warehouse/t/split=x/part-0.parquet"
    s = _s3_settings(filesystem)
    assert (s["endpoint_override"], s["scheme"], s["region"]) == ("127.0.0.1:9000", "http", "eu-west-1")
    assert not storage.is_local(f"{scheme}://bucket/x")


def test_hadoop_endpoint_without_scheme_follows_the_ssl_setting():
    s = _s3_settings(storage.filesystem_and_path("s3a://b/k", {"fs.s3a.endpoint": "minio:9000",
                                                               "fs.s3a.connection.ssl.enabled": "false"})[0])
    assert (s["endpoint_override"], s["scheme"]) == ("minio:9000", "http")
    s = _s3_settings(storage.filesystem_and_path("s3a://b/k", {"fs.s3a.endpoint": "s3.eu-west-1.amazonaws.com"})[0])
    assert (s["endpoint_override"], s["scheme"]) == ("s3.eu-west-1.amazonaws.com", "https")


def test_endpoint_from_the_environment_when_spark_sets_none(monkeypatch):
    assert _s3_settings(storage.filesystem_and_path("s3://b/k")[0])["endpoint_override"] == ""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-wide:4566")
    assert _s3_settings(storage.filesystem_and_path("s3://b/k")[0])["endpoint_override"] == "aws-wide:4566"
    monkeypatch.setenv("EBBTIDE_S3_ENDPOINT", "https://ours:9000")
    s = _s3_settings(storage.filesystem_and_path("s3://b/k")[0])
    assert (s["endpoint_override"], s["scheme"]) == ("ours:9000", "https")
    s = _s3_settings(storage.filesystem_and_path("s3://b/k", {"fs.s3a.endpoint": "http://spark:9000"})[0])
    assert s["endpoint_override"] == "spark:9000"


def test_s3_needs_a_bucket():
    with pytest.raises(StorageError, match="bucket"):
        storage.filesystem_and_path("s3:///key")


@pytest.mark.skipif(importlib.util.find_spec("adlfs") is not None, reason="adlfs is installed here")
def test_abfss_without_adlfs_names_the_package():
    with pytest.raises(StorageError, match="adlfs"):
        storage.filesystem_and_path("abfss://container@account.dfs.core.windows.net/ebbtide/x.parquet")


def test_options_from_spark_read_the_hadoop_settings():
    class Conf:
        def get(self, key, default=None):
            return {"spark.hadoop.fs.s3a.endpoint": "http://minio:9000",
                    "spark.hadoop.fs.s3a.access.key": "secret"}.get(key, default)

    class NoJvmSession:  # Spark Connect: no sparkContext
        conf = Conf()

    assert storage.options_from_spark(NoJvmSession()) == {"fs.s3a.endpoint": "http://minio:9000"}


def test_whole_files_round_trip_through_file_urls(tmp_path):
    url = f"file://{tmp_path}/ckpt/fp/state.json"
    assert storage.read_bytes(url) is None and not storage.exists(url)
    storage.write_bytes(url, b"one")
    storage.write_bytes(url, b"two")
    assert storage.read_bytes(url) == b"two" and storage.exists(url)
    assert sorted(p.name for p in (tmp_path / "ckpt" / "fp").iterdir()) == ["state.json"]  # no temp file left
    storage.remove_file(url)
    assert not storage.exists(url)
    storage.torch_save({"epoch": 3}, storage.join(f"file://{tmp_path}/ckpt", "fp", "last.pt"))
    assert storage.torch_load(str(tmp_path / "ckpt" / "fp" / "last.pt"), weights_only=False) == {"epoch": 3}
    storage.remove_tree(f"file://{tmp_path}/ckpt")
    assert not (tmp_path / "ckpt").exists()
    storage.remove_tree(f"file://{tmp_path}/ckpt")  # gone already: nothing to do


def test_copy_dir_keeps_the_layout(tmp_path):
    src = tmp_path / "src"
    (src / "figs").mkdir(parents=True)
    (src / "report.md").write_text("r")
    (src / "figs" / "a.png").write_bytes(b"png")
    storage.copy_dir(str(src), f"file://{tmp_path}/dst")
    assert (tmp_path / "dst" / "report.md").read_text() == "r"
    assert (tmp_path / "dst" / "figs" / "a.png").read_bytes() == b"png"


# ------------------------------------------------------------------------------------------
# Petastorm
# ------------------------------------------------------------------------------------------


def _write_parts(folder, n_files=2, rows=10):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        pq.write_table(pa.table({"x": np.arange(rows, dtype=np.int64) + 100 * i}), folder / f"part-{i}.parquet")
    return [folder / f"part-{i}.parquet" for i in range(n_files)]


def _read_all(urls, filesystem) -> list[int]:
    from petastorm import make_batch_reader

    # Petastorm 0.13 drives pyarrow's legacy dataset API, which warns on every reader.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with make_batch_reader(urls, filesystem=filesystem, reader_pool_type="dummy", num_epochs=1,
                               shuffle_row_groups=False) as reader:
            return sorted(int(v) for b in reader for v in b.x)


def test_petastorm_reads_spark_style_file_urls(tmp_path):
    parts = _write_parts(tmp_path / "t" / "split=train")
    urls, filesystem = storage.petastorm_source([f"file:{p}" for p in parts])
    assert urls == [f"file://{p}" for p in parts]
    assert _read_all(urls, filesystem) == list(range(10)) + list(range(100, 110))


def test_petastorm_reads_a_filesystem_whose_paths_have_no_root(tmp_path):
    """Object stores name files bucket/key: the adapter gets /bucket/key from Petastorm."""
    _write_parts(tmp_path / "bucket" / "t")
    store = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())  # paths like bucket/t/part-0.parquet
    urls = ["file:///bucket/t/part-0.parquet", "file:///bucket/t/part-1.parquet"]
    assert _read_all(urls, storage._legacy_filesystem(store)) == list(range(10)) + list(range(100, 110))


def test_petastorm_source_for_s3_keeps_bucket_and_key():
    urls, filesystem = storage.petastorm_source(["s3a://bucket/w/t/split=train/part-0.parquet"],
                                                {"fs.s3a.endpoint": "http://127.0.0.1:9000"})
    assert urls == ["file:///bucket/w/t/split=train/part-0.parquet"]
    assert isinstance(filesystem.fs, pafs.S3FileSystem) and filesystem._path("/bucket/w/x") == "bucket/w/x"


def test_petastorm_source_refuses_mixed_filesystems_and_ambiguous_paths(tmp_path):
    with pytest.raises(StorageError, match="more than one"):
        storage.petastorm_source([f"file:{tmp_path}/a.parquet", "s3://b/a.parquet"])
    with pytest.raises(StorageError, match="'#'"):
        storage.petastorm_source([f"{tmp_path}/a#1.parquet"])
