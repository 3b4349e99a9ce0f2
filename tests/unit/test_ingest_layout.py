"""Ingest's source layouts, column mapping and flag handling (no Spark)."""
from __future__ import annotations

import argparse
import dataclasses
from datetime import datetime, timezone

import pytest

from ebbtide import ingest
from ebbtide.config import IngestConf, SourceConf


def src(**kw) -> SourceConf:
    return dataclasses.replace(SourceConf(path="/data"), **kw)


def test_movielens_layout_comes_from_the_header():
    lay = ingest.resolve_layout(src(adapter="movielens"), "userId,movieId,rating,timestamp")
    assert lay.columns == ("userId", "movieId", "rating", "timestamp")
    assert lay.header_line == "userId,movieId,rating,timestamp"
    assert lay.mapping == {"user_id": "userId", "item_id": "movieId", "value": "rating", "ts": "timestamp"}
    assert lay.event_type_const == "rating"


def test_movielens_header_with_a_byte_order_mark_still_maps():
    lay = ingest.resolve_layout(src(adapter="movielens"), "\ufeffuserId,movieId,rating,timestamp")
    assert lay.columns[0] == "userId"


def test_movielens_layout_rejects_a_file_that_is_not_ratings():
    with pytest.raises(ValueError, match="userId"):
        ingest.resolve_layout(src(adapter="movielens"), "movieId,title,genres")


def test_movielens_100k_is_headerless_tab_separated():
    lay = ingest.resolve_layout(src(adapter="movielens_100k"), "196\t242\t3\t881250949")
    assert lay.delimiter == "\t" and lay.header_line is None
    assert lay.columns == ("user", "item", "rating", "timestamp")


def test_recbole_header_drops_the_type_suffixes():
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    lay = ingest.resolve_layout(src(adapter="recbole_inter"), header)
    assert lay.columns == ("user_id", "item_id", "rating", "timestamp")
    assert lay.header_line == header
    assert lay.mapping["value"] == "rating" and lay.event_type_const == "rating"


def test_recbole_without_rating_keeps_the_default_event_type():
    lay = ingest.resolve_layout(src(adapter="recbole_inter"), "user_id:token\titem_id:token\ttimestamp:float")
    assert "value" not in lay.mapping and lay.event_type_const is None


def test_taobao_maps_behaviours_to_event_types():
    lay = ingest.resolve_layout(src(adapter="taobao"), "1,2268318,2520377,pv,1511544070")
    assert lay.header_line is None
    assert lay.mapping["event_type"] == "behavior" and lay.mapping["category"] == "category"
    assert lay.event_type_map == {"pv": "view", "cart": "cart", "fav": "favorite", "buy": "purchase"}


def test_generic_csv_uses_the_column_mapping_and_same_named_columns():
    lay = ingest.resolve_layout(
        src(columns={"user_id": "visitorid", "item_id": "itemid", "ts": "timestamp", "event_type": "event"}),
        "timestamp,visitorid,event,itemid,transactionid",
    )
    assert lay.mapping == {"user_id": "visitorid", "item_id": "itemid", "ts": "timestamp", "event_type": "event"}
    assert lay.columns == ("timestamp", "visitorid", "event", "itemid", "transactionid")


def test_generic_csv_without_header_names_columns_by_position():
    lay = ingest.resolve_layout(
        src(csv_header=False, columns={"user_id": "_c0", "item_id": "_c1", "ts": "_c2"}), "a,b,1700000000"
    )
    assert lay.columns == ("_c0", "_c1", "_c2") and lay.header_line is None


def test_missing_required_mapping_names_the_fix():
    with pytest.raises(ValueError, match=r"user_id.*--column"):
        ingest.resolve_layout(src(columns={"item_id": "itemid", "ts": "timestamp"}), "timestamp,visitorid,itemid")


def test_unknown_contract_field_is_refused():
    with pytest.raises(ValueError, match="contract fields"):
        ingest.resolve_layout(src(columns={"usr": "visitorid"}), "visitorid")


def test_adapters_refuse_json_and_parquet():
    with pytest.raises(ValueError, match="generic"):
        ingest.resolve_layout(src(adapter="movielens", format="json"), None)


def test_generic_parquet_checks_the_schema():
    lay = ingest.resolve_layout(src(format="parquet", columns={"value": "rating"}), None,
                                ["user_id", "item_id", "ts", "rating", "note"])
    assert lay.mapping == {"user_id": "user_id", "item_id": "item_id", "ts": "ts", "value": "rating"}
    with pytest.raises(ValueError, match="item_id"):
        ingest.resolve_layout(src(format="parquet"), None, ["user_id", "ts"])


def test_json_mapping_cannot_be_checked_up_front():
    lay = ingest.resolve_layout(src(format="json", columns={"user_id": "user"}), None)
    assert lay.mapping["user_id"] == "user" and lay.mapping["item_id"] == "item_id"


def test_split_csv_line_respects_quotes():
    assert ingest.split_csv_line('a,"b,c",d', ",") == ["a", "b,c", "d"]


def test_flags_override_the_config():
    p = argparse.ArgumentParser()
    ingest.add_arguments(p)
    args = p.parse_args(["--source", "/x", "--adapter", "generic", "--format", "json",
                         "--column", "user_id=visitorid", "--column", "ts = timestamp", "--ts-unit", "ms"])
    conf = IngestConf(source=SourceConf(path="/y", columns={"item_id": "itemid"}))
    s = ingest.source_conf(conf, args)
    assert (s.path, s.format, s.adapter, s.ts_unit) == ("/x", "json", "generic", "ms")
    assert s.columns == {"item_id": "itemid", "user_id": "visitorid", "ts": "timestamp"}
    with pytest.raises(ValueError, match="FIELD=SOURCE"):
        ingest.source_conf(conf, p.parse_args(["--column", "user_id"]))


def test_ts_bounds():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    lo, hi = ingest.ts_bounds(IngestConf(min_ts="2000-01-01T00:00:00Z", max_future_days=2), now)
    assert lo == datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()
    assert hi == now + 2 * 86400
    with pytest.raises(ValueError, match="min_ts"):
        ingest.ts_bounds(IngestConf(min_ts="yesterday"))


def test_single_file_glob_matches_only_that_name():
    import fnmatch

    g = ingest._single_file_glob("ratings.csv")
    assert g == "{ratings.csv}"
    assert ingest._single_file_glob("a,b[1].csv") == "{a\\,b\\[1\\].csv}"
    assert fnmatch.fnmatch("ratings.csv", g[1:-1])


def test_stream_id_depends_on_what_is_read():
    a = ingest.Source(conf=src(), folder="file:/d", glob="*", files=[])
    b = ingest.Source(conf=src(adapter="taobao"), folder="file:/d", glob="*", files=[])
    c = ingest.Source(conf=src(), folder="file:/d", glob="*.csv", files=[])
    assert len({a.stream_id, b.stream_id, c.stream_id}) == 3
    assert a.stream_id == ingest.Source(conf=src(), folder="file:/d", glob="*", files=["x"]).stream_id
