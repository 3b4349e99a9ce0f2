"""Ingest's pure transforms on a handful of rows: parsing, the contract, timestamps, ids."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from ebbtide import ingest
from ebbtide.config import IngestConf, SourceConf

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
BOUNDS = ingest.ts_bounds(IngestConf(min_ts="1990-01-01T00:00:00Z", max_future_days=1), NOW)
CSV = ingest.resolve_layout(SourceConf(path="x"), "user_id,item_id,ts,value")
JSON = ingest.resolve_layout(SourceConf(path="x", format="json"), None)


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


def prepare(spark, lines, layout=CSV, unit=None):
    df = spark.createDataFrame([(line, "file:/src/a.csv") for line in lines], "value string, source_file string")
    if unit:
        layout = dataclasses.replace(layout, ts_unit=unit)
    return ingest.prepare(df, layout, *BOUNDS)


def one(spark, line, layout=CSV, unit=None):
    (row,) = prepare(spark, [line], layout, unit).collect()
    return row


BAD_ROWS = [
    (CSV, ",i1,1700000000,1", ingest.R_MISSING_USER),
    (CSV, "  ,i1,1700000000,1", ingest.R_MISSING_USER),
    (CSV, "u1,,1700000000,1", ingest.R_MISSING_ITEM),
    (CSV, "u1,i1,,1", ingest.R_MISSING_TS),
    (CSV, "u1,i1,yesterday,1", ingest.R_UNPARSABLE_TS),
    (CSV, "u1,i1,2024-13-45T99:00:00Z,1", ingest.R_UNPARSABLE_TS),
    (CSV, "u1,i1,100,1", ingest.R_TS_RANGE),            # 1970: before ingest.min_ts
    (CSV, "u1,i1,4102444800,1", ingest.R_TS_RANGE),     # 2100: past now + max_future_days
    (CSV, "u1,i1,1700000000,five", ingest.R_BAD_VALUE),
    (CSV, "u1,i1,1700000000,NaN", ingest.R_BAD_VALUE),
    (CSV, "u1,i1,1700000000", ingest.R_FIELD_COUNT),
    (CSV, "u1,i1,1700000000,1,surplus", ingest.R_FIELD_COUNT),
    (JSON, '{"user_id": "u1", "item_id": "i1", "ts": 17', ingest.R_MALFORMED_JSON),
    (JSON, "[1, 2, 3]", ingest.R_MALFORMED_JSON),
    (JSON, '{"user_id": "u1", "user_id": "u2", "item_id": "i1", "ts": 1700000000}', ingest.R_MALFORMED_JSON),
    (JSON, '{"item_id": "i1", "ts": 1700000000}', ingest.R_MISSING_USER),
    (JSON, '{"user_id": null, "item_id": "i1", "ts": 1700000000}', ingest.R_MISSING_USER),
    (JSON, '{"user_id": "u1", "item_id": "i1", "ts": 1700000000, "value": {"a": 1}}', ingest.R_BAD_VALUE),
    (JSON, '{"user_id": "u1", "item_id": "i1", "ts": true}', ingest.R_UNPARSABLE_TS),
]


@pytest.fixture(scope="module")
def bad_rows(spark):
    """All bad lines prepared in one Spark job per layout: raw line -> prepared row."""
    out = {}
    for layout in (CSV, JSON):
        out.update({r["raw"]: r for r in prepare(spark, [l for lay, l, _ in BAD_ROWS if lay is layout], layout).collect()})
    return out


@pytest.mark.parametrize("layout,line,reason", BAD_ROWS, ids=[f"{r}:{l[:30]}" for _, l, r in BAD_ROWS])
def test_each_kind_of_bad_row_gets_its_reason(bad_rows, layout, line, reason):
    row = bad_rows[line]
    assert row["reason"] == reason
    assert row["raw"] == line


def test_good_rows_have_no_reason_and_typed_fields(spark):
    row = one(spark, 'u1,"i,1",1700000000,2.5')
    assert row["reason"] is None
    assert (row["user_id"], row["item_id"], row["value"]) == ("u1", "i,1", 2.5)
    assert row["ts"] == datetime(2023, 11, 14, 22, 13, 20)
    assert one(spark, " u1 , i1 ,1700000000,")["value"] is None  # empty value: absent, not bad


def test_header_and_blank_lines_are_not_rows(spark):
    rows = prepare(spark, ["user_id,item_id,ts,value", "", "   ", "u1,i1,1700000000,1"]).collect()
    assert [r["user_id"] for r in rows] == ["u1"]


# Each pair: the text as the source has it, the UTC instant it must land on.
TIMESTAMPS = [
    ("1710052200", "auto", utc(2024, 3, 10, 6, 30)),
    ("1710052200.25", "auto", utc(2024, 3, 10, 6, 30, 0, 250000)),
    ("1710052200123", "auto", utc(2024, 3, 10, 6, 30, 0, 123000)),
    ("1710052200123456", "auto", utc(2024, 3, 10, 6, 30, 0, 123456)),
    ("1710052200123456789", "auto", utc(2024, 3, 10, 6, 30, 0, 123457)),
    ("2024-03-10", "auto", utc(2024, 3, 10)),                               # a date alone: midnight UTC
    ("2024-03-10T01:30:00-05:00", "auto", utc(2024, 3, 10, 6, 30)),
    ("2024-03-10T12:00:00+05:30", "auto", utc(2024, 3, 10, 6, 30)),
    ("2024-03-10T06:30:00Z", "auto", utc(2024, 3, 10, 6, 30)),
    ("2024-03-10 06:30:00.5", "auto", utc(2024, 3, 10, 6, 30, 0, 500000)),  # no offset: UTC
    ("1710052200", "s", utc(2024, 3, 10, 6, 30)),
    ("1710052200123", "ms", utc(2024, 3, 10, 6, 30, 0, 123000)),
    ("2024-03-10T08:30:00+02:00", "iso", utc(2024, 3, 10, 6, 30)),
    ("1710052200123456", "us", utc(2024, 3, 10, 6, 30, 0, 123456)),
    ("1710052200123456000", "ns", utc(2024, 3, 10, 6, 30, 0, 123456)),
]


MISFITS = [
    ("1710052200123", "s", ingest.R_TS_RANGE),      # ms read as seconds: year 56000
    ("1710052200", "ms", ingest.R_TS_RANGE),        # seconds read as ms: 1970
    ("1710052200", "iso", ingest.R_UNPARSABLE_TS),  # a number is not ISO-8601
]


@pytest.fixture(scope="module")
def parsed_ts(spark):
    """(text, unit) -> prepared row, one Spark job per unit."""
    out = {}
    for unit in ingest.TS_UNITS:
        texts = sorted({t for t, u, _ in TIMESTAMPS + MISFITS if u == unit})
        rows = prepare(spark, [f"u1,i1,{t},1" for t in texts], unit=unit).collect()
        out.update({(r["ts_text"], unit): r for r in rows})
    return out


@pytest.mark.parametrize("text,unit,expected", TIMESTAMPS)
def test_timestamps_land_on_the_right_utc_instant(parsed_ts, text, unit, expected):
    row = parsed_ts[(text, unit)]
    assert row["reason"] is None
    # The session runs in UTC, so the naive datetime Spark returns is the UTC wall clock.
    assert row["ts"].replace(tzinfo=timezone.utc) == expected


@pytest.mark.parametrize("text,unit,reason", MISFITS)
def test_a_forced_unit_that_does_not_fit_is_quarantined(parsed_ts, text, unit, reason):
    assert parsed_ts[(text, unit)]["reason"] == reason


def test_unmapped_columns_go_to_extra_and_event_types_normalise(spark):
    row = one(spark, '{"user_id": "u1", "item_id": "i1", "ts": 1700000000, "event_type": " View ", '
                     '"props": {"color": "red"}, "n": 3}', JSON)
    assert row["event_type"] == "view"
    assert row["extra"] == {"props": '{"color":"red"}', "n": "3"}
    taobao = ingest.resolve_layout(SourceConf(path="x", adapter="taobao"), None)
    rows = prepare(spark, ["1,10,7,pv,1511544070", "1,11,7,buy,1511544071", "1,12,7,Scroll,1511544072",
                           "1,13,7,,1511544073"], taobao).collect()
    assert [r["event_type"] for r in rows] == ["view", "purchase", "scroll", "interaction"]
    assert {r["category"] for r in rows} == {"7"} and rows[0]["extra"] == {}


def test_event_id_is_the_source_id_else_a_hash_of_the_whole_source_row(spark):
    layout = ingest.resolve_layout(SourceConf(path="x"), "user_id,item_id,ts,value,device")
    lines = [
        "u1,i1,1710052200,1,ios",
        "u1,i1,1710052200,1,ios",                # the same row again: the same event
        "u1,i1,1710052200,1,web",                # differs only in a column the contract does not name
        "u1,i1,1710052200000,1,ios",             # the same instant spelled in ms: the same event
        "u1,i1,2024-03-10T06:30:00Z,1,ios",      # ... and in ISO-8601
        "u1,i1,1710052201,1,ios",                # a second later is another event
        "u1,i1,1710052200,1,",                   # an empty column
        'u1,i1,1710052200,1,""',                 # an empty text is not a missing one
    ]
    ids = [r["event_id"] for r in ingest.to_bronze(prepare(spark, lines, layout), "run").collect()]
    assert ids[0] == ids[1] == ids[3] == ids[4]
    assert len(set(ids)) == 5
    assert all(len(i) == 64 for i in ids)
    src_ids = ingest.to_bronze(prepare(spark, ['{"event_id": "e-7", "user_id": "u", "item_id": "i", "ts": 1700000000}'],
                                       JSON), "run").collect()
    assert src_ids[0]["event_id"] == "e-7"
    # JSON: key order does not matter, null and "" do.
    json_ids = [r["event_id"] for r in ingest.to_bronze(prepare(spark, [
        '{"user_id": "u", "item_id": "i", "ts": 1700000000, "note": null}',
        '{"ts": 1700000000, "note": null, "item_id": "i", "user_id": "u"}',
        '{"user_id": "u", "item_id": "i", "ts": 1700000000, "note": ""}',
    ], JSON), "run").collect()]
    assert json_ids[0] == json_ids[1] != json_ids[2]


def test_null_values_and_padding_are_missing(spark):
    rows = {r["raw"]: r for r in prepare(spark, [
        "NA,i1,1710052200,1", "\\N,i1,1710052200,1", "\tu1\t,i1,1710052200,NA", "u1,null,1710052200,1",
        "u1,i1,None,1", "u1,i1,1710052200,nan", "u1,i1,1710052200,N/A",
    ]).collect()}
    assert rows["NA,i1,1710052200,1"]["reason"] == ingest.R_MISSING_USER
    assert rows["\\N,i1,1710052200,1"]["reason"] == ingest.R_MISSING_USER
    tabbed = rows["\tu1\t,i1,1710052200,NA"]
    assert (tabbed["reason"], tabbed["user_id"], tabbed["value"]) == (None, "u1", None)
    assert rows["u1,null,1710052200,1"]["reason"] == ingest.R_MISSING_ITEM
    assert rows["u1,i1,None,1"]["reason"] == ingest.R_MISSING_TS
    assert rows["u1,i1,1710052200,nan"]["value"] is None and rows["u1,i1,1710052200,nan"]["reason"] is None
    own = dataclasses.replace(CSV, null_values=("-",))
    assert one(spark, "-,i1,1710052200,1", own)["reason"] == ingest.R_MISSING_USER
    assert one(spark, "NA,i1,1710052200,1", own)["user_id"] == "NA"


def test_multi_character_and_escaped_delimiters(spark):
    for delim, line in [("::", "u1::i1::1710052200::2"), ("\\t", "u1\ti1\t1710052200\t2"),
                        ("|", "u1|i1|1710052200|2"), (" ", "u1 i1 1710052200 2"), (";", "u1;i1;1710052200;2"),
                        ("\\\\", "u1\\i1\\1710052200\\2")]:
        layout = ingest.resolve_layout(SourceConf(path="x", csv_header=False, csv_delimiter=delim, columns={
            "user_id": "_c0", "item_id": "_c1", "ts": "_c2", "value": "_c3"}), line)
        row = one(spark, line, layout)
        assert (row["reason"], row["user_id"], row["item_id"], row["value"]) == (None, "u1", "i1", 2.0), delim
    layout = ingest.resolve_layout(SourceConf(path="x", csv_delimiter="::"), "user_id::item_id::ts")
    assert one(spark, 'u1::"i::1"::1710052200', layout)["item_id"] == "i::1"
    assert one(spark, "u1::i1::1710052200::x", layout)["reason"] == ingest.R_FIELD_COUNT


def test_expression_mappings_read_source_columns_by_name(spark):
    layout = ingest.resolve_layout(SourceConf(path="x", csv_delimiter=";", columns={
        "user_id": "user", "item_id": "item", "ts": "expr:concat_ws(' ', day, time)"}), "day;time;user;item")
    row = one(spark, "2024-03-10;06:30:00;u1;i1", layout)
    assert row["reason"] is None and row["ts"] == datetime(2024, 3, 10, 6, 30)
    assert row["extra"] == {"day": "2024-03-10", "time": "06:30:00"}
    assert one(spark, "2024-03-10;NA;u1;i1", layout)["ts"] == datetime(2024, 3, 10)  # a missing time is null
    j = ingest.resolve_layout(SourceConf(path="x", format="json", columns={"item_id": "expr:upper(fields['sku'])"}),
                              None)
    assert one(spark, '{"user_id": "u", "sku": "ab", "ts": 1700000000}', j)["item_id"] == "AB"
    with pytest.raises(ingest.ConfigError, match="nosuch"):
        ingest.check_layout(spark, dataclasses.replace(layout, mapping={**layout.mapping, "value": "expr:nosuch + 1"}))


def test_dedupe_keeps_one_deterministic_copy(spark):
    lines = ["u1,i1,1710052200,1", "u1,i1,1710052200,1", "u2,i1,1710052200,1"]
    df = spark.createDataFrame(
        [(line, f"file:/src/{name}") for line, name in zip(lines, ["b.csv", "a.csv", "a.csv"])],
        "value string, source_file string",
    )
    events = ingest.dedupe_events(ingest.to_bronze(ingest.prepare(df, CSV, *BOUNDS), "run")).collect()
    assert sorted((e["user_id"], e["source_file"]) for e in events) == [("u1", "file:/src/a.csv"),
                                                                        ("u2", "file:/src/a.csv")]


def test_identical_bad_lines_stay_distinct_in_quarantine(spark):
    bad = prepare(spark, ["u1,,1,1", "u1,,1,1", "u2,,1,1"]).where("reason is not null")
    q1 = ingest.to_quarantine(bad, "run").collect()
    q2 = ingest.to_quarantine(bad, "other").collect()
    assert len({r["quarantine_id"] for r in q1}) == 3
    assert {r["quarantine_id"] for r in q1} == {r["quarantine_id"] for r in q2}


def test_parquet_rows_keep_their_instants_and_raw_json(spark):
    from pyspark.sql import functions as F

    df = spark.createDataFrame(
        [(7, "i1", datetime(2024, 3, 10, 6, 30), 4.0, "x")],
        "user_id long, item_id string, ts timestamp, rating double, note string",
    ).withColumn("source_file", F.lit("file:/p.parquet"))
    layout = ingest.resolve_layout(SourceConf(path="x", format="parquet", columns={"value": "rating"}), None,
                                   ["user_id", "item_id", "ts", "rating", "note"])
    (row,) = ingest.prepare(df, layout, *BOUNDS).collect()
    assert row["reason"] is None
    assert (row["user_id"], row["value"], row["extra"]) == ("7", 4.0, {"note": "x"})
    assert row["ts"] == datetime(2024, 3, 10, 6, 30)
    assert '"user_id":7' in row["raw"]


def test_a_quote_left_open_is_quarantined_fragment_by_fragment(spark):
    # A quoted field holding a line break reaches a line reader as two lines; neither is parsed by
    # guessing, both keep their text.
    rows = prepare(spark, ['u1,i1,1700000000,"5', ' stars"', 'u2,i2,1700000000,"a, b"']).collect()
    assert [r["reason"] for r in rows] == [ingest.R_UNBALANCED_QUOTE, ingest.R_UNBALANCED_QUOTE, ingest.R_BAD_VALUE]
    assert rows[1]["raw"] == ' stars"'


def test_bytes_that_are_not_the_encoding_are_quarantined_and_kept(spark):
    latin1 = "u-jos\u00e9,i1,1700000000,1".encode("latin-1")
    df = spark.createDataFrame([(bytearray(latin1), "file:/src/a.csv")], "value binary, source_file string")
    df = df.selectExpr("cast(value as string) as value", "source_file")  # as the text source hands it over
    (bad,) = ingest.prepare(df, CSV, *BOUNDS).collect()
    assert bad["reason"] == "invalid utf-8" and bad["raw"] == "u-jos\u00e9,i1,1700000000,1"
    (good,) = ingest.prepare(df, dataclasses.replace(CSV, encoding="latin-1"), *BOUNDS).collect()
    assert good["reason"] is None and good["user_id"] == "u-jos\u00e9"


# ---------------------------------------------------------------------------------------------
# The shortcuts taken for speed give exactly what the general expressions gave: the same ids
# (rows already in bronze must dedupe against new ones), extras, reasons.
# ---------------------------------------------------------------------------------------------

TRICKY = [
    "u1,i1,1710052200,1,ios",
    "u1,i1,1710052200000,1,ios",                    # the same instant in ms: the same id
    '" u2 ",\u00a0i2\u3000,2024-03-10T06:30:00Z,,web',
    'u3,"a ""q"", b",1710052200,NA,',
    'u4,i\u00e9\U0001f600,1710052200,"",""',
    "\tu5\t,i5,1710052200,\\N,\u2028x\u2028",
    "u6,,1710052200,1,ios",                         # missing item
    "u7,i7,1710052200,1",                           # wrong field count
    "u8,i8,1710052200,1,a,b",
    'u9,"i9,1710052200,1,ios',                      # unbalanced quote
    "\ufeffu10,i10,1710052200,1,ios",               # a BOM before the first field
    "u11,i11,1710052200,five,ios",
]


def test_the_fast_paths_give_what_the_general_expressions_give(spark, monkeypatch):
    from pyspark.sql import functions as F

    csv = ingest.resolve_layout(SourceConf(path="x"), "user_id,item_id,ts,value,device")
    parquet = ingest.resolve_layout(SourceConf(path="x", format="parquet", columns={"value": "rating"}), None,
                                    ["user_id", "item_id", "ts", "rating", "note", "device"])
    pq_rows = spark.createDataFrame(
        [(7, "i1", datetime(2024, 3, 10, 6, 30), 4.0, None, "x"), (8, "i\u00e9", None, float("nan"), "", "y")],
        "user_id long, item_id string, ts timestamp, rating double, note string, device string",
    ).withColumn("source_file", F.lit("file:/p.parquet"))

    def run(layout, df):
        rows = ingest.prepare(df, layout, *BOUNDS)
        out = rows.select("*", ingest.event_id_col().alias("event_id")).orderBy("raw").collect()
        return [r.asDict(recursive=True) for r in out]

    lines = spark.createDataFrame([(line, "file:/src/a.csv") for line in TRICKY], "value string, source_file string")
    fast = [run(csv, lines), run(parquet, pq_rows)]
    monkeypatch.setattr(ingest, "_static_keys", lambda columns: False)  # the per-row map functions
    general = [run(csv, lines), run(parquet, pq_rows)]
    assert fast == general
    good = [r for r in fast[0] if r["reason"] is None]
    assert len(good) == 7 and len({r["event_id"] for r in good}) == 6  # u1 in s and in ms: one event


def _row_hash_as_it_was(layout):
    """The row hash as ingest wrote it into bronze before the per-column shortcut, kept verbatim
    (regular-expression trim, ts_micros, entries sorted by Spark per row): bronze holds ids made
    this way, so the shortcut must give them again, or rows read again would stop deduplicating."""
    from pyspark.sql import functions as F

    def missing_to_null(c, null_values):
        t = F.regexp_replace(c, r"^[\s\p{Z}]+|[\s\p{Z}]+$", "")
        keep = t != ""
        if null_values:
            keep = keep & ~t.isin(*null_values)
        return F.when(keep, t)

    def ts_micros(ts_text, unit):
        num = F.expr("try_cast(null as double)") if unit == "iso" else ts_text.try_cast("double")
        num = F.when(~F.isnan(num) & (F.abs(num) != F.lit(float("inf"))), num)
        iso = F.unix_micros(F.try_to_timestamp(ts_text)).cast("double")
        if unit in ingest._UNIT_MICROS:
            return num * ingest._UNIT_MICROS[unit]
        if unit == "iso":
            return iso
        a = F.abs(num)
        by_size = (F.when(a < ingest.MS_THRESHOLD, num * 1e6).when(a < ingest.US_THRESHOLD, num * 1e3)
                   .when(a < ingest.NS_THRESHOLD, num).otherwise(num * 1e-3))
        return F.when(num.isNotNull(), by_size).otherwise(iso)

    ts_column = layout.mapping["ts"]
    ts_us = ts_micros(missing_to_null(F.try_element_at(F.col("fields"), F.lit(ts_column)), layout.null_values),
                      layout.ts_unit)
    instant = F.concat(F.lit("@us:"), F.round(ts_us).cast("long").cast("string"))
    fields = F.transform_values(
        F.col("fields"), lambda k, v: F.when((k == F.lit(ts_column)) & ts_us.isNotNull(), instant).otherwise(v))
    pairs = F.transform(F.array_sort(F.map_entries(fields)), lambda e: F.array(e["key"], e["value"]))
    return F.sha2(F.to_json(pairs), 256)


def _hashes_old_and_new(parsed, layout) -> tuple[dict, dict]:
    old = {r[0]: r[1] for r in parsed.select("raw", _row_hash_as_it_was(layout)).collect()}
    new = {r[0]: r[1] for r in ingest.to_contract(parsed, layout).select("raw", "row_hash").collect()}
    return old, new


@pytest.mark.parametrize("unit", ["auto", "s"])
def test_csv_row_hash_is_the_one_bronze_already_holds(spark, unit):
    # Column names whose code-point order differs from their file order, upper case and non-ASCII.
    header = "user_id,item_id,ts,value,Device,\u00fcnit,_x"
    layout = ingest.resolve_layout(SourceConf(path="x", ts_unit=unit), header)
    assert ingest._static_keys(layout.columns)
    lines = [
        "u1,i1,1710052200,1,ios,a,b",
        "u1,i1,1710052200000,1,ios,a,b",
        '" u2 ",\u00a0i2\u3000,2024-03-10T06:30:00Z,,web,,',
        'u3,"",1710052200,"",\\N,NA,""',
        "u4,i\u00e9\U0001f600,\t1710052200\t,1,\u2028x\u2028,\u00fc,\u3000",
        "u5,i5,NA,1,ios,a,b",
        "u6,i6,,1,ios,a,b",
        'u7,i7," ",1,ios,a,b',
        "u8,i8,2024-03-10,1,\"a,b\",z,\"\"\"q\"\"\"",
        "u9,i9,1.7100522e9,1,x,y,z",
        "u10,i10,-5,1,x,y,z",
        "u11,i11,not a time,1,x,y,z",
        "u12,i12,1710052200,1",                 # the wrong field count: no fields, no hash
        'u13,"i13,1710052200,1,ios,a,b',        # an open quote: no fields, no hash
    ]
    df = spark.createDataFrame([(line, "file:/src/a.csv") for line in lines], "value string, source_file string")
    old, new = _hashes_old_and_new(ingest.parse_lines(df, layout), layout)
    assert len(new) == len(lines) and new == old
    assert sum(v is None for v in new.values()) == 2
    assert len({v for v in new.values() if v is not None}) == len(lines) - 2 - (unit == "auto")


def test_parquet_row_hash_is_the_one_bronze_already_holds(spark):
    from pyspark.sql import functions as F

    rows = [
        (7, "i1", datetime(2024, 3, 10, 6, 30), 4.0, None, "x", "\u00e9"),
        (8, "i\u00e9\U0001f600", None, float("nan"), "", "y", None),
        (9, " i9 ", datetime(2024, 3, 10, 6, 30, 0, 123456), None, "\u2028", "", ""),
        (None, "", datetime(1999, 12, 31, 23, 59, 59), float("inf"), "NA", "\\N", "\u3000"),
    ]
    df = spark.createDataFrame(
        rows, "user_id long, item_id string, ts timestamp, rating double, note string, Device string, `\u00e9t\u00e9` string",
    ).withColumn("source_file", F.lit("file:/p.parquet"))
    layout = ingest.resolve_layout(SourceConf(path="x", format="parquet", columns={"value": "rating"}), None,
                                   [c for c in df.columns if c != "source_file"])
    assert ingest._static_keys(layout.columns)
    old, new = _hashes_old_and_new(ingest.parse_parquet(df), layout)
    assert len(new) == len(rows) and new == old
    assert None not in new.values() and len(set(new.values())) == len(rows)

    # A timestamp kept as epoch milliseconds in a long column enters as the same instant.
    as_ms = df.withColumn("ts", (F.unix_micros("ts") / 1000).cast("long"))
    old_ms, new_ms = _hashes_old_and_new(ingest.parse_parquet(as_ms), layout)
    assert new_ms == old_ms


def test_padding_is_trimmed_as_the_regular_expression_did(spark):
    from pyspark.sql import functions as F

    chars = [chr(c) for c in range(0x3100) if not 0xD800 <= c <= 0xDFFF] + ["\ufeff", "\u180e", "\U0001f600"]
    df = spark.createDataFrame([(f"{c}{c}x{c}y{c}",) for c in chars], "s string")
    regex = F.regexp_replace("s", r"^[\s\p{Z}]+|[\s\p{Z}]+$", "")
    trimmed = F.btrim(F.col("s"), F.lit(ingest.PADDING))
    assert df.where(~regex.eqNullSafe(trimmed)).count() == 0
    assert df.where(F.col("s") != trimmed).count() == len(ingest.PADDING)


@pytest.mark.parametrize("delimiter", [",", "::"])
def test_field_and_quote_counts_match_the_regular_expressions(spark, delimiter):
    from pyspark.sql import functions as F

    d = delimiter
    lines = [f"a{d}b{d}c", f'a{d}"b{d}x"{d}c', f'a{d}"b""{d}"{d}c', f"a{d}b", f"a{d}b{d}c{d}", f'a{d}"b{d}c',
             f"{d}{d}", f"a{d}{d}{d}c", f'"a"{d}"b"{d}""', f'a{d}b"{d}c', "abc", f"a{d[0]}b{d}c"]
    layout = ingest.resolve_layout(SourceConf(path="x", csv_delimiter=d, csv_header=False, columns={
        "user_id": "_c0", "item_id": "_c1", "ts": "_c2"}), f"x{d}y{d}z")
    df = spark.createDataFrame([(line, "file:/a.csv") for line in lines], "value string, source_file string")
    got = {r["raw"]: r["parse_error"] for r in ingest.parse_lines(df, layout).collect()}
    # The expressions parse_lines used before (regular expressions over every line).
    java_literal = "".join(c if c.isalnum() else "\\" + c for c in d)
    unquoted = F.regexp_replace(F.col("value"), '"(?:[^"]|"")*"', "")
    n_fields = F.size(F.split(unquoted, java_literal, -1))
    n_quotes = F.length("value") - F.length(F.regexp_replace("value", '"', ""))
    error = (F.when(n_quotes % 2 == 1, F.lit(ingest.R_UNBALANCED_QUOTE))
             .when(n_fields != 3, F.lit(ingest.R_FIELD_COUNT)))
    want = {r[0]: r[1] for r in df.select("value", error).collect()}
    assert got == want
    assert sum(v is None for v in want.values()) >= 4
