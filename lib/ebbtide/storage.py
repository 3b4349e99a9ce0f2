"""Storage URLs -> filesystems: the one place that turns a path or URL into something to open.

Spark hands out file URLs (``DataFrame.inputFiles()``: ``file:/...``, ``dbfs:/...``, ``s3://``,
``s3a://``, ``abfss://``) and the config holds templates that resolve to a local folder or a URL
(``storage.root``, ``train.checkpoint_dir``, ``evaluate.report_dir``). Python code that reads or
writes those files (pyarrow footers, Petastorm, training checkpoints, evaluation reports) goes
through :func:`filesystem_and_path`, so one config works on a laptop, Databricks and EMR:

- a bare path or a ``file:`` URL: the local filesystem;
- ``dbfs:/x``: the Databricks FUSE mount ``/dbfs/x`` (``dbfs:/Volumes/...`` is ``/Volumes/...``),
  which every node of a Databricks cluster has;
- ``s3://``, ``s3a://``, ``s3n://``: ``pyarrow.fs.S3FileSystem``, credentials from the AWS chain
  (instance profile, environment), endpoint from the Hadoop options Spark uses for ``s3a``
  (:func:`options_from_spark`), else ``EBBTIDE_S3_ENDPOINT``, ``AWS_ENDPOINT_URL_S3`` or
  ``AWS_ENDPOINT_URL`` (MinIO, moto, an S3 gateway);
- ``abfss://``, ``abfs://``, ``az://``: the ``adlfs`` fsspec filesystem, when installed;
- anything else pyarrow knows (``gs://``, ``hdfs://``).

Only pyarrow is needed, imported lazily: the GPU benchmark runs the feed without Spark.
"""
from __future__ import annotations

import importlib.util
import io
import os
import re
import urllib.parse
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from pyarrow import fs as pafs

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
S3_SCHEMES = ("s3", "s3a", "s3n")
ABFS_SCHEMES = ("abfss", "abfs", "az")
DBFS_FUSE = "/dbfs"
# Hadoop's names for the S3 settings pyarrow also needs; Spark passes them as spark.hadoop.<key>.
S3_ENDPOINT_KEY = "fs.s3a.endpoint"
S3_REGION_KEY = "fs.s3a.endpoint.region"
S3_SSL_KEY = "fs.s3a.connection.ssl.enabled"
HADOOP_KEYS = (S3_ENDPOINT_KEY, S3_REGION_KEY, S3_SSL_KEY)
ENDPOINT_ENV = ("EBBTIDE_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


class StorageError(ValueError):
    """A URL that no filesystem here can open; the message says what is missing."""


def scheme(url: str) -> str:
    """Lower-case scheme of a URL, '' for a plain path."""
    m = _SCHEME.match(url)
    return m.group(1).lower() if m else ""


def local_path(url: str) -> Optional[str]:
    """The path on this machine's filesystem (FUSE mounts included), None for an object store."""
    s = scheme(url)
    if not s:
        return os.path.abspath(os.path.expanduser(url))
    p = urllib.parse.urlparse(url)
    if s == "file":
        if p.netloc not in ("", "localhost"):
            raise StorageError(f"{url}: a file URL on another host ({p.netloc}) cannot be opened here")
        return urllib.parse.unquote(p.path)
    if s == "dbfs":
        # dbfs:/x, dbfs:///x: the workspace's DBFS, mounted at /dbfs on every cluster node;
        # Unity Catalog volumes are mounted at /Volumes/<catalog>/<schema>/<volume>.
        path = "/" + urllib.parse.unquote(p.netloc + p.path).lstrip("/")
        return path if path == "/Volumes" or path.startswith("/Volumes/") else DBFS_FUSE + path
    return None


def is_local(url: str) -> bool:
    return local_path(url) is not None


def options_from_spark(spark: Any) -> dict[str, str]:
    """The Hadoop S3 settings of a Spark session (spark.hadoop.fs.s3a.*) that pyarrow needs too,
    so Python reads the table files from where Spark wrote them. Secrets are left out: pyarrow
    takes credentials from the AWS chain, and these options travel to training workers."""
    out: dict[str, str] = {}
    try:
        hconf = spark.sparkContext._jsc.hadoopConfiguration()
        get = hconf.get
    except Exception:  # noqa: BLE001 - Spark Connect and shared clusters have no JVM handle
        get = None
    for key in HADOOP_KEYS:
        value = get(key) if get is not None else None
        if value is None:
            try:
                value = spark.conf.get(f"spark.hadoop.{key}", None)
            except Exception:  # noqa: BLE001
                value = None
        if value:
            out[key] = str(value)
    return out


def s3_endpoint(options: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The S3 endpoint override: Spark's fs.s3a.endpoint, else the first endpoint variable set."""
    value = (options or {}).get(S3_ENDPOINT_KEY)
    if value:
        return value
    return next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), None)


def _s3_filesystem(options: Optional[Mapping[str, str]]) -> "pafs.S3FileSystem":
    opts = options or {}
    kwargs: dict[str, Any] = {}
    endpoint = s3_endpoint(opts)
    if endpoint:
        m = re.match(r"^(https?)://(.+?)/?$", endpoint)
        if m:
            kwargs["scheme"], kwargs["endpoint_override"] = m.group(1), m.group(2)
        else:
            # Hadoop's endpoint is host[:port]; TLS unless fs.s3a.connection.ssl.enabled is false.
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = "http" if str(opts.get(S3_SSL_KEY, "true")).lower() == "false" else "https"
    region = opts.get(S3_REGION_KEY) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    from pyarrow import fs as pafs

    return pafs.S3FileSystem(**kwargs)


def _fsspec_filesystem(url: str, package: str) -> tuple["pafs.FileSystem", str]:
    if importlib.util.find_spec(package) is None:
        raise StorageError(f"{url}: reading {scheme(url)}:// from Python needs the {package} package "
                           f"(pip install {package}); Spark itself reads it through its Hadoop connector")
    import fsspec
    from pyarrow import fs as pafs

    filesystem, path = fsspec.core.url_to_fs(url)
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem)), path


def filesystem_and_path(url: str, options: Optional[Mapping[str, str]] = None) -> tuple["pafs.FileSystem", str]:
    """A pyarrow filesystem and the path on it for a path or URL (see the module doc).

    ``options``: Hadoop S3 settings (:func:`options_from_spark`); they win over the environment.
    """
    from pyarrow import fs as pafs

    path = local_path(url)
    if path is not None:
        return pafs.LocalFileSystem(), path
    s = scheme(url)
    p = urllib.parse.urlparse(url)
    if s in S3_SCHEMES:
        if not p.netloc:
            raise StorageError(f"{url}: an S3 URL needs a bucket, e.g. s3://bucket/path")
        return _s3_filesystem(options), p.netloc + urllib.parse.unquote(p.path).rstrip("/")
    if s in ABFS_SCHEMES:
        return _fsspec_filesystem(url, "adlfs")
    try:
        return pafs.FileSystem.from_uri(url)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid or OSError
        raise StorageError(f"{url}: no filesystem for {s}:// here ({e})") from None


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


# --------------------------------------------------------------------------------------------
# Whole files: checkpoints, reports, cached arrays
# --------------------------------------------------------------------------------------------


def exists(url: str, options: Optional[Mapping[str, str]] = None) -> bool:
    from pyarrow import fs as pafs

    filesystem, path = filesystem_and_path(url, options)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def list_dir(url: str, options: Optional[Mapping[str, str]] = None) -> list[tuple[str, bool]]:
    """``(name, is_folder)`` of a folder's entries, sorted by name; empty when it does not exist.
    On an object store a folder is a key prefix, so one with no object under it does not exist."""
    from pyarrow import fs as pafs

    filesystem, path = filesystem_and_path(url, options)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos)


def read_bytes(url: str, options: Optional[Mapping[str, str]] = None) -> Optional[bytes]:
    """The file's content, None when it does not exist."""
    from pyarrow import fs as pafs

    filesystem, path = filesystem_and_path(url, options)
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read()
    except OSError:
        # Object stores do not all say "not found" with FileNotFoundError: ask.
        if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        raise


def write_bytes(url: str, data: bytes, options: Optional[Mapping[str, str]] = None) -> None:
    """Write a whole file so that a reader sees the old content or the new, never a part: locally
    through a temporary file and a rename; an object store publishes an object whole on close."""
    from pyarrow import fs as pafs

    filesystem, path = filesystem_and_path(url, options)
    local = isinstance(filesystem, pafs.LocalFileSystem)
    if local:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    target = f"{path}.tmp-{os.getpid()}" if local else path
    with filesystem.open_output_stream(target) as f:
        f.write(data)
    if local:
        os.replace(target, path)


def remove_file(url: str, options: Optional[Mapping[str, str]] = None) -> None:
    """Delete a file; nothing to do when it does not exist."""
    from pyarrow import fs as pafs

    filesystem, path = filesystem_and_path(url, options)
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        filesystem.delete_file(path)


def remove_tree(url: str, options: Optional[Mapping[str, str]] = None) -> None:
    """Delete a folder and everything in it; nothing to do when it does not exist."""
    from pyarrow import fs as pafs

    filesystem, path = filesystem_and_path(url, options)
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        filesystem.delete_dir(path)


def copy_dir(local_dir: str, url: str, options: Optional[Mapping[str, str]] = None) -> None:
    """Copy a local folder's files into a folder at ``url`` (created as needed)."""
    for dirpath, _dirs, files in os.walk(local_dir):
        rel = os.path.relpath(dirpath, local_dir)
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                write_bytes(join(url, *(() if rel == "." else (rel,)), name), f.read(), options)


def local_dir_for(url: str) -> str:
    """A local folder in which to write a folder of files (a report and its figures) bound for
    ``url``: the folder itself when ``url`` is on this machine (created), else a new temporary one.
    Hand it to :func:`publish_dir` once written."""
    path = local_path(url)
    if path is None:
        import tempfile

        return tempfile.mkdtemp(prefix="ebbtide-staged-")
    os.makedirs(path, exist_ok=True)
    return path


def publish_dir(local_dir: str, url: str, options: Optional[Mapping[str, str]] = None) -> None:
    """The end of :func:`local_dir_for`: a folder bound for an object store is copied there and the
    temporary folder removed; a local one is already in place."""
    if local_path(url) is not None:
        return
    import shutil

    copy_dir(local_dir, url, options)
    shutil.rmtree(local_dir, ignore_errors=True)


def torch_save(obj: Any, url: str, options: Optional[Mapping[str, str]] = None) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(url, buf.getvalue(), options)


def torch_load(url: str, options: Optional[Mapping[str, str]] = None, **kwargs: Any) -> Any:
    """torch.load of a file at any URL; None when it does not exist."""
    import torch

    data = read_bytes(url, options)
    return None if data is None else torch.load(io.BytesIO(data), **kwargs)


# --------------------------------------------------------------------------------------------
# Petastorm
# --------------------------------------------------------------------------------------------


def petastorm_source(urls: Sequence[str], options: Optional[Mapping[str, str]] = None) -> tuple[list[str], Any]:
    """``(urls, filesystem)`` for ``petastorm.make_batch_reader(urls, filesystem=...)``.

    Petastorm 0.13 on pyarrow 14 reads through the legacy ``pyarrow.filesystem`` API (its workers
    call ``dataset.fs.open``), and given a filesystem it only takes the path out of each URL
    (``file://`` URLs: the path as written; other schemes go through fsspec, which would need
    s3fs). So every file is handed over as ``file://`` + ``/`` + its path on one filesystem, and
    the filesystem is a legacy adapter over the pyarrow one that strips that ``/`` again where
    paths have no root (``bucket/key``)."""
    if not urls:
        raise ValueError("no Parquet files to read")
    resolved = [filesystem_and_path(u, options) for u in urls]
    first = resolved[0][0]
    if any(type(f) is not type(first) for f, _ in resolved):
        raise StorageError(f"the files are on more than one kind of filesystem: {sorted({scheme(u) for u in urls})}")
    paths = [p for _, p in resolved]
    bad = [p for p in paths if any(c in p for c in "#?;")]
    if bad:
        raise StorageError(f"{bad[0]}: Petastorm reads file paths from URLs, so a path may not hold '#', '?' or ';'")
    return ["file:///" + p.lstrip("/") for p in paths], _legacy_filesystem(first)


def _legacy_filesystem(filesystem: "pafs.FileSystem"):
    from pyarrow import filesystem as legacyfs
    from pyarrow import fs as pafs

    class PetastormFileSystem(legacyfs.FileSystem):
        """The part of the legacy filesystem API Petastorm and legacy ParquetDataset call."""

        def __init__(self, fs: "pafs.FileSystem"):
            self.fs = fs
            self.rooted = isinstance(fs, pafs.LocalFileSystem)

        def _path(self, path: str) -> str:
            return path if self.rooted else path.lstrip("/")

        def _type(self, path: str):
            return self.fs.get_file_info(self._path(path)).type

        def isdir(self, path):
            return self._type(path) == pafs.FileType.Directory

        def isfile(self, path):
            return self._type(path) == pafs.FileType.File

        def exists(self, path):
            return self._type(path) != pafs.FileType.NotFound

        def _isfilestore(self):
            return self.rooted

        def open(self, path, mode="rb"):
            if mode != "rb":
                raise ValueError(f"opening {path} with mode {mode!r}: Petastorm only reads here")
            return self.fs.open_input_file(self._path(path))

        @property
        def pathsep(self):
            return "/"

    return PetastormFileSystem(filesystem)
