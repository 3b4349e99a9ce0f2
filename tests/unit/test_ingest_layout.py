"""Ingest's source layouts, column mapping and flag handling (no Spark)."""
from __future__ import annotations

import argparse
import dataclasses
from datetime import datetime, timezone

import pytest

from ebbtide import ingest
from ebbtide.config import ConfigError, IngestConf, SourceConf


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
    assert ingest.split_csv_line('a,"say ""hi""",', ",") == ["a", 'say "hi"', ""]


def test_split_csv_line_takes_multi_character_delimiters():
    assert ingest.split_csv_line("1::1193::5::978300760", "::") == ["1", "1193", "5", "978300760"]
    assert ingest.split_csv_line('a::"b::c"::', "::") == ["a", "b::c", ""]
    assert ingest.split_csv_line("a b  c", " ") == ["a", "b", "", "c"]


@pytest.mark.parametrize("text,delimiter", [
    (",", ","), (";", ";"), ("|", "|"), ("::", "::"), (" ", " "), ("\\t", "\t"), ("\t", "\t"),
    ("\\\\", "\\"), ("\\x01", "\x01"), ("\\u00a6", "\u00a6"), ("||", "||"),
])
def test_delimiters_decode_escapes_and_may_be_several_characters(text, delimiter):
    assert ingest.parse_delimiter(text) == delimiter


@pytest.mark.parametrize("text", ["", '"', "a\nb", "\\q", "\\"])
def test_a_bad_delimiter_is_a_configuration_error_naming_the_fix(text):
    with pytest.raises(ConfigError, match=r"--delimiter.*'::'"):
        ingest.parse_delimiter(text)


def test_movielens_1m_layout_through_generic_flags():
    lay = ingest.resolve_layout(
        src(csv_header=False, csv_delimiter="::",
            columns={"user_id": "_c0", "item_id": "_c1", "value": "_c2", "ts": "_c3"}),
        "1::1193::5::978300760",
    )
    assert lay.delimiter == "::" and lay.header_line is None
    assert lay.columns == ("_c0", "_c1", "_c2", "_c3")
    assert lay.mapping == {"user_id": "_c0", "item_id": "_c1", "value": "_c2", "ts": "_c3"}


def test_a_header_split_on_a_multi_character_delimiter():
    lay = ingest.resolve_layout(src(csv_delimiter="\\t"), "user_id\titem_id\tts")
    assert lay.delimiter == "\t" and lay.columns == ("user_id", "item_id", "ts")
    lay = ingest.resolve_layout(src(csv_delimiter="||"), "user_id||item_id||ts")
    assert lay.columns == ("user_id", "item_id", "ts")


def test_null_values_reach_the_layout():
    assert ingest.resolve_layout(src(), "user_id,item_id,ts").null_values == SourceConf().null_values
    assert {"NA", "N/A", "null", "NULL", "\\N", "None", "nan"} == set(SourceConf().null_values)
    assert ingest.resolve_layout(src(null_values=("-",)), "user_id,item_id,ts").null_values == ("-",)


def test_expression_mappings_count_as_mapped():
    lay = ingest.resolve_layout(src(csv_delimiter=";", columns={"ts": "expr:concat_ws(' ', day, time)"}),
                                "user_id;item_id;day;time")
    assert lay.expressions == {"ts": "concat_ws(' ', day, time)"}
    with pytest.raises(ConfigError, match="empty expression"):
        ingest.resolve_layout(src(columns={"ts": "expr: "}), "user_id,item_id,day")


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


def test_delimiter_header_and_null_value_flags():
    p = argparse.ArgumentParser()
    ingest.add_arguments(p)
    conf = IngestConf(source=SourceConf(path="/y"))
    s = ingest.source_conf(conf, p.parse_args(["--delimiter", "::", "--no-header", "--null-values", "NA, -,"]))
    assert (s.csv_delimiter, s.csv_header, s.null_values) == ("::", False, ("NA", "-"))
    s = ingest.source_conf(conf, p.parse_args([]))
    assert (s.csv_delimiter, s.csv_header, s.null_values) == (",", True, SourceConf().null_values)
    assert ingest.source_conf(conf, p.parse_args(["--header", "--null-values", ""])).null_values == ()
    assert ingest.source_conf(conf, p.parse_args(["--delimiter", " "])).csv_delimiter == " "
    with pytest.raises(ConfigError, match="--delimiter"):
        ingest.source_conf(conf, p.parse_args(["--delimiter", ""]))


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
