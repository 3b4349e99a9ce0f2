"""Files Python writes beside Spark's on an S3 store: found through the Spark session's s3a settings.

A real S3 API (moto's server, in this process, on the loopback address) and no endpoint variable in
the environment, as on the cluster of `make cluster-test`: a call that forgets the session's
settings goes to AWS itself and fails, as it did there. Each test here holds one fix the cluster
run needed: the warehouse listed for registration, the sampled negatives, the evaluation and
monitoring reports, MLflow's name for the bucket.
"""
from __future__ import annotations

import datetime as dt
import os
import socket

import numpy as np
import pytest

from ebbtide import storage

BUCKET = "ebbtide-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket; credentials in the environment (as a node's), the endpoint only in the
    Hadoop options a Spark session would hand over."""
    import boto3

    for k in storage.ENDPOINT_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client, {storage.S3_ENDPOINT_KEY: s3_endpoint, storage.S3_REGION_KEY: "us-east-1"}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=o["Key"])
    client.delete_bucket(Bucket=BUCKET)


class FakeSession:
    """What ebbtide reads of a Spark session here: its conf (no JVM, as on Spark Connect) and SQL."""

    def __init__(self, options: dict):
        self.statements: list[str] = []
        hadoop = {f"spark.hadoop.{k}": v for k, v in options.items()}

        class Conf:
            def get(self, key, default=None):
                return hadoop.get(key, default)

        self.conf = Conf()

    def sql(self, statement: str):
        self.statements.append(statement)


def test_list_dir_on_s3_and_locally(s3, tmp_path):
    client, opts = s3
    for key in ("w/db/a/_delta_log/00000000000000000000.json", "w/db/a/part-0.parquet", "w/db/b.txt"):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    assert storage.list_dir(f"s3a://{BUCKET}/w/db", opts) == [("a", True), ("b.txt", False)]
    assert storage.list_dir(f"s3a://{BUCKET}/w/missing", opts) == []
    (tmp_path / "a").mkdir()
    (tmp_path / "b.txt").write_text("x")
    assert storage.list_dir(str(tmp_path)) == [("a", True), ("b.txt", False)]
    assert storage.list_dir(str(tmp_path / "missing")) == []


def test_register_all_finds_the_tables_of_a_warehouse_on_s3(s3, tmp_path):
    """Each spark-submit job starts with an empty catalog and registers the warehouse's tables;
    with the warehouse on s3a it listed the folder with os.listdir, found nothing, and `ebbtide sql`
    then knew no table."""
    from conftest import make_config

    from ebbtide import tables

    client, opts = s3
    cfg = make_config(tmp_path, f"storage.root=s3a://{BUCKET}/ebbtide")
    db = f"ebbtide/warehouse/{cfg.storage.database}.db"
    client.put_object(Bucket=BUCKET, Key=f"{db}/bronze_events/_delta_log/00000000000000000000.json", Body=b"{}")
    client.put_object(Bucket=BUCKET, Key=f"{db}/bronze_events/event_date=2025-01-01/part-0.parquet", Body=b"x")
    client.put_object(Bucket=BUCKET, Key=f"{db}/half_made/_delta_log/_staged_commits/x.json", Body=b"{}")
    client.put_object(Bucket=BUCKET, Key=f"{db}/not_a_table/part-0.parquet", Body=b"x")
    session = FakeSession(opts)

    assert tables.register_all(session, cfg) == ["bronze_events"]
    assert session.statements == [
        f"CREATE TABLE IF NOT EXISTS {cfg.storage.database}.bronze_events USING DELTA "
        f"LOCATION 's3a://{BUCKET}/{db}/bronze_events'"
    ]
    assert tables.has_commit(f"s3a://{BUCKET}/{db}/bronze_events", opts)
    assert not tables.has_commit(f"s3a://{BUCKET}/{db}/half_made", opts)


def test_sampled_negatives_on_s3_use_the_session_settings(s3):
    from ebbtide.evaluation.metrics import load_negatives, save_negatives

    _, opts = s3
    url = f"s3a://{BUCKET}/ebbtide/evaluation/negatives-test.npz"
    neg = np.arange(12, dtype=np.int64).reshape(3, 4)
    save_negatives(url, neg, ["a", "b", "c"], opts)
    assert np.array_equal(load_negatives(url, ["a", "b", "c"], opts), neg)
    assert load_negatives(url, ["a", "b"], opts) is None  # drawn for other examples


def test_a_folder_bound_for_s3_is_staged_locally_then_published(s3, tmp_path):
    client, opts = s3
    url = f"s3a://{BUCKET}/ebbtide/reports/evaluate/test-temporal"
    staged = storage.local_dir_for(url)
    with open(f"{staged}/report.md", "w") as f:
        f.write("# report")
    storage.publish_dir(staged, url, opts)
    assert storage.read_bytes(f"{url}/report.md", opts) == b"# report"
    assert not os.path.exists(staged)  # the temporary folder is gone

    local = tmp_path / "reports" / "x"
    assert storage.local_dir_for(str(local)) == str(local) and local.is_dir()
    (local / "report.md").write_text("r")
    storage.publish_dir(str(local), str(local))  # already in place
    assert (local / "report.md").read_text() == "r"


def test_the_monitoring_report_of_an_s3_root_lands_in_the_bucket(s3, tmp_path, monkeypatch):
    """It was written to os.path.join('s3a://...', day): a folder named `s3a:` in the working folder."""
    from conftest import make_config

    from ebbtide.monitor import run as monitor_run

    client, opts = s3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(monitor_run, "history", lambda *a, **k: {})
    cfg = make_config(tmp_path / "unused", f"storage.root=s3a://{BUCKET}/ebbtide")
    mc = cfg.section("monitor")
    path = monitor_run.write_report(FakeSession(opts), cfg, mc, dt.date(2025, 3, 10), monitor_run.Measured(), "run-1")

    assert path == f"s3a://{BUCKET}/ebbtide/reports/monitor/2025-03-10/report.md"
    assert b"2025-03-10" in storage.read_bytes(path, opts)
    assert list(tmp_path.iterdir()) == []  # nothing on local disk
