"""`ebbtide ingest`: raw behaviour logs -> ``bronze_events``, ``quarantine_events``, ``ops_ingest_log``.

A source is a folder (or one file) of CSV, JSON-lines or Parquet files. Each row is mapped onto the
raw event contract (``user_id``, ``item_id``, ``ts`` required; ``event_type``, ``event_id``,
``value``, ``category``, ``session_id`` optional), either by an adapter that knows a layout
(MovieLens, RecBole, Taobao) or by a column mapping (``generic``). Source columns the contract
does not name are kept in the ``extra`` map.

How it stays incremental and crash-safe: a Structured Streaming file source with
``trigger(availableNow=True)`` remembers in its checkpoint which files it has read, so a rerun
reads only new files. Each micro-batch is written with insert-only MERGEs (bronze on
``event_id``, quarantine on ``quarantine_id``) and its accounting row is MERGEd on
``(stream_id, batch_id)``; a batch replayed after a crash therefore inserts nothing twice and
rewrites the same accounting row. A file read again under other settings (another checkpoint)
that would get new event ids for rows bronze already holds is refused before anything is
written, or with ``--reread replace`` has its old rows replaced in the same MERGE
(:func:`check_reread`).

How a night costs what its own data costs: a micro-batch is parsed once (the result is cached
and every later step reads the cache), and it looks its events up in bronze, and MERGEs into
bronze, through a predicate that names only the days its events fall on (bronze is partitioned
by ``event_date``; a source's own ids are looked up by their id range, which Delta's min/max
file statistics prune), so it reads the bronze files its events can match, never the whole
table (see :func:`known_events`). Duplicates are found on the event ids alone (:func:`decide`),
so whole rows cross no shuffle unless their id repeats (:func:`rows_to_insert`).

How it never loses a row: CSV and JSON files are read as text lines, so the raw line survives
for quarantine whatever is wrong with it. Every line (header lines and blank lines aside) ends up
as exactly one of: a new bronze row, a quarantine row, or a counted duplicate.

The transforms (:func:`parse_lines`, :func:`parse_parquet`, :func:`to_contract`,
:func:`validate`, :func:`to_bronze`, :func:`dedupe_events`, :func:`to_quarantine`,
:func:`known_events`, :func:`decide`, :func:`rows_to_insert`) are pure DataFrame -> DataFrame
functions; :func:`run` at the bottom does the I/O.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from ebbtide import catalog
from ebbtide.config import ConfigError, IngestConf, SourceConf, parse_utc
from ebbtide.log import get_logger, step

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = get_logger("ingest")

# The tables this stage writes: columns, comments, keys and partitioning are in ebbtide.catalog.
BRONZE_SPEC, QUARANTINE_SPEC, OPS_LOG_SPEC = catalog.BRONZE_EVENTS, catalog.QUARANTINE_EVENTS, catalog.OPS_INGEST_LOG
BRONZE, QUARANTINE, OPS_LOG = BRONZE_SPEC.name, QUARANTINE_SPEC.name, OPS_LOG_SPEC.name

# The raw event contract: what a source column can be mapped to.
CONTRACT_FIELDS = ("user_id", "item_id", "ts", "event_type", "event_id", "value", "category", "session_id")
REQUIRED_FIELDS = ("user_id", "item_id", "ts")
FORMATS = ("csv", "json", "parquet")
ADAPTERS = ("generic", "movielens", "movielens_100k", "recbole_inter", "taobao")
TS_UNITS = ("auto", "s", "ms", "us", "ns", "iso")
# ingest.source.encoding -> the charset name Spark's decode() and Java take.
ENCODINGS = {"utf-8": "UTF-8", "latin-1": "ISO-8859-1", "ascii": "US-ASCII"}

# ts_unit auto: an epoch number below 1e11 is seconds (1e11 s is the year 5138), below 1e14
# milliseconds (1e11 ms is 1973), below 1e17 microseconds, else nanoseconds.
MS_THRESHOLD = 1e11
US_THRESHOLD = 1e14
NS_THRESHOLD = 1e17
_UNIT_MICROS = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}

# Quarantine reasons, in the order they are checked: a row gets the first that applies.
R_ENCODING = "invalid {encoding}"  # e.g. "invalid utf-8": the line's bytes are not text in the encoding
# An odd number of quotes: most often a quoted field that spans lines, which a line-by-line reader
# splits; each fragment is quarantined with its text, so the record can be put back together.
R_UNBALANCED_QUOTE = "unbalanced quote"
R_FIELD_COUNT = "wrong field count"
R_MALFORMED_JSON = "malformed json"
R_MISSING_USER = "missing user_id"
R_MISSING_ITEM = "missing item_id"
R_MISSING_TS = "missing ts"
R_UNPARSABLE_TS = "unparsable ts"
R_TS_RANGE = "ts out of range"
R_BAD_VALUE = "bad value type"

# Separates fields inside hashed strings; cannot occur in a text line's fields by accident.
_SEP = "\u001f"

# A column mapping whose source is a Spark SQL expression over the source columns, e.g.
# --column "ts=expr:concat_ws(' ', day, time)".
EXPR_PREFIX = "expr:"


# --------------------------------------------------------------------------------------
# Layout: how one source's rows map onto the contract (config + adapter + what the files say)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    format: str
    adapter: str
    ts_unit: str = "auto"
    # The field delimiter as it appears in the files (escapes already decoded; may be several characters).
    delimiter: str = ","
    # Source column names in file order (CSV: the header, the adapter or _c0, _c1...; Parquet: the
    # schema); empty for JSON, whose keys are only known row by row.
    columns: tuple[str, ...] = ()
    # The header line as it appears in the files; every line equal to it is skipped.
    header_line: Optional[str] = None
    # contract field -> source column
    mapping: dict[str, str] = field(default_factory=dict)
    # A fixed event type for every row (MovieLens ratings), else the mapped column's value.
    event_type_const: Optional[str] = None
    # Lower-cased source value -> contract event type (Taobao's pv/cart/fav/buy).
    event_type_map: dict[str, str] = field(default_factory=dict)
    event_type_default: str = "interaction"
    # Field texts that mean "no value" (compared after trimming).
    null_values: tuple[str, ...] = ()
    # Text encoding of the lines (a key of ENCODINGS).
    encoding: str = "utf-8"

    @property
    def expressions(self) -> dict[str, str]:
        """contract field -> Spark SQL expression, for the fields mapped with ``expr:``."""
        return {f: c[len(EXPR_PREFIX):] for f, c in self.mapping.items() if c.startswith(EXPR_PREFIX)}


_TAOBAO_BEHAVIOR = {"pv": "view", "cart": "cart", "fav": "favorite", "buy": "purchase"}


_ESCAPES = {"t": "\t", "\\": "\\"}


def parse_delimiter(text: str) -> str:
    """The field delimiter that ``--delimiter`` / ``ingest.source.csv_delimiter`` names.

    One or more characters (Spark splits on the whole string, e.g. MovieLens-1M's ``::``);
    ``\\t`` is a tab, ``\\\\`` a backslash, ``\\xHH`` and ``\\uHHHH`` a code point, so a shell
    or YAML that cannot hold a tab can still name one. Raises ConfigError naming the fix.
    """
    fix = ("set --delimiter (ingest.source.csv_delimiter) to one or more characters, e.g. "
           "',' ';' '|' '::' ' ' or '\\t' for a tab")
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        m = re.match(r"\\(?:(t|\\)|x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4}))", text[i:])
        if not m:
            raise ConfigError(f"delimiter {text!r} holds an unknown escape {text[i:i + 2]!r}; {fix}")
        out.append(_ESCAPES[m.group(1)] if m.group(1) else chr(int(m.group(2) or m.group(3), 16)))
        i += m.end()
    delimiter = "".join(out)
    if not delimiter:
        raise ConfigError(f"the delimiter is empty; {fix}")
    if any(c in delimiter for c in '"\r\n'):
        raise ConfigError(f"delimiter {text!r} holds a quote or a line break, which CSV reserves; {fix}")
    return delimiter


def _spark_sep(delimiter: str) -> str:
    """The delimiter as Spark's CSV ``sep`` option reads it (Spark decodes backslash escapes)."""
    return delimiter.replace("\\", "\\\\")


def _java_literal(text: str) -> str:
    """A Java regex matching ``text`` literally (every non-alphanumeric character escaped)."""
    return "".join(c if c.isalnum() else "\\" + c for c in text)


def split_csv_line(line: str, delimiter: str) -> list[str]:
    """Fields of one CSV line, for the header (rows are parsed by Spark). A field that starts with
    a quote runs to its closing quote ("" inside is one quote), so it may hold the delimiter;
    the delimiter may be several characters, which Python's csv module does not allow."""
    if not line:
        return []
    fields, cur, i, n = [], [], 0, len(line)
    at_start, quoted = True, False
    while i < n:
        ch = line[i]
        if quoted:
            if ch == '"' and line.startswith('"', i + 1):
                cur.append('"')
                i += 2
                continue
            if ch == '"':
                quoted = False
            else:
                cur.append(ch)
            i += 1
        elif at_start and ch == '"':
            quoted, at_start = True, False
            i += 1
        elif line.startswith(delimiter, i):
            fields.append("".join(cur))
            cur, at_start = [], True
            i += len(delimiter)
        else:
            cur.append(ch)
            at_start = False
            i += 1
    fields.append("".join(cur))
    return fields


def resolve_layout(
    src: SourceConf,
    first_line: Optional[str] = None,
    parquet_columns: Optional[list[str]] = None,
    strict: bool = True,
) -> Layout:
    """The layout of a source: adapter defaults, then the files' header, then the user's column mapping.

    ``first_line`` is the first line of the first file (CSV sources); ``parquet_columns`` the
    Parquet schema's column names. Raises ConfigError (a ValueError), naming the fix, when a
    required contract field has no source column; with ``strict=False`` (one file of a source
    whose header drifted) such a field is left unmapped, so that file's rows are quarantined.
    """
    unknown = sorted(set(src.columns) - set(CONTRACT_FIELDS))
    if unknown:
        raise ConfigError(
            f"ingest.source.columns maps unknown contract field(s) {unknown}; "
            f"the contract fields are {', '.join(CONTRACT_FIELDS)} (e.g. --column user_id=visitorid)"
        )
    first_line = (first_line or "").lstrip("\ufeff")
    kw: dict[str, Any] = dict(ts_unit=src.ts_unit, event_type_default=src.event_type_default or "interaction",
                              null_values=tuple(src.null_values), encoding=src.encoding)
    adapter = src.adapter

    if adapter != "generic" and src.format != "csv":
        raise ConfigError(
            f"adapter {adapter!r} reads delimited text; set format csv (or leave --format out), "
            "or use --adapter generic for JSON / Parquet sources"
        )

    if adapter == "movielens":
        # ratings.csv: userId,movieId,rating,timestamp with a header
        cols = tuple(split_csv_line(first_line, ",")) or ("userId", "movieId", "rating", "timestamp")
        layout = Layout(
            format="csv", adapter=adapter, delimiter=",", columns=cols, header_line=first_line or None,
            mapping={"user_id": "userId", "item_id": "movieId", "value": "rating", "ts": "timestamp"},
            event_type_const="rating", **kw,
        )
    elif adapter == "movielens_100k":
        # u.data: user item rating timestamp, tab-separated, no header
        layout = Layout(
            format="csv", adapter=adapter, delimiter="\t", columns=("user", "item", "rating", "timestamp"),
            mapping={"user_id": "user", "item_id": "item", "value": "rating", "ts": "timestamp"},
            event_type_const="rating", **kw,
        )
    elif adapter == "recbole_inter":
        # RecBole atomic file: tab-separated header of name:type tokens, e.g. user_id:token
        if not first_line:
            raise ValueError("a RecBole .inter file starts with a header such as user_id:token<TAB>item_id:token")
        cols = tuple(c.split(":", 1)[0].strip() for c in first_line.split("\t"))
        mapping = {"user_id": "user_id", "item_id": "item_id", "ts": "timestamp"}
        if "rating" in cols:
            mapping["value"] = "rating"
        layout = Layout(
            format="csv", adapter=adapter, delimiter="\t", columns=cols, header_line=first_line,
            mapping=mapping, event_type_const="rating" if "rating" in cols else None, **kw,
        )
    elif adapter == "taobao":
        # UserBehavior.csv: user,item,category,behavior,ts without a header
        layout = Layout(
            format="csv", adapter=adapter, delimiter=",",
            columns=("user", "item", "category", "behavior", "ts"),
            mapping={"user_id": "user", "item_id": "item", "category": "category",
                     "event_type": "behavior", "ts": "ts"},
            event_type_map=dict(_TAOBAO_BEHAVIOR), **kw,
        )
    elif adapter == "generic":
        delimiter = parse_delimiter(src.csv_delimiter) if src.format == "csv" else ","
        if src.format == "csv":
            fields = split_csv_line(first_line, delimiter)
            if src.csv_header:
                cols, header = tuple(f.strip() for f in fields), (first_line or None)
            else:
                cols, header = tuple(f"_c{i}" for i in range(len(fields))), None
        elif src.format == "parquet":
            cols, header = tuple(parquet_columns or ()), None
        else:
            cols, header = (), None
        # Contract fields the source names the same way need no mapping.
        mapping = {f: f for f in CONTRACT_FIELDS if not cols or f in cols}
        layout = Layout(
            format=src.format, adapter=adapter, delimiter=delimiter,
            columns=cols, header_line=header, mapping=mapping, **kw,
        )
    else:
        raise ConfigError(f"unknown adapter {adapter!r}; choose from {', '.join(ADAPTERS)}")
    if layout.format == "csv" and not layout.columns:
        raise ValueError("the first source file has no first line to take column names from; "
                         "remove empty files or narrow --glob")

    mapping = {**layout.mapping, **src.columns}
    for f, c in mapping.items():
        if c.startswith(EXPR_PREFIX) and not c[len(EXPR_PREFIX):].strip():
            raise ConfigError(f"--column {f}={c} has an empty expression; write e.g. "
                              f"{f}=expr:concat_ws(' ', day, time)")
    known = set(layout.columns) | set(parquet_columns or ())
    if known:
        def present(c: Optional[str]) -> bool:
            return c is not None and (c in known or c.startswith(EXPR_PREFIX))

        missing = [f"{f} (source column {mapping[f]!r})" if f in mapping else f
                   for f in REQUIRED_FIELDS if not present(mapping.get(f))]
        if missing and strict:
            raise ConfigError(
                f"source columns {sorted(known)} lack the contract field(s) {', '.join(missing)}; "
                "map them with --column FIELD=SOURCE_COLUMN (or ingest.source.columns), "
                "or pick the matching --adapter"
            )
        # A mapped optional column the files do not have is dropped from the mapping, not an error.
        mapping = {f: c for f, c in mapping.items() if present(c)}
    if "event_type" in src.columns:
        layout = dataclasses.replace(layout, event_type_const=None)
    return dataclasses.replace(layout, mapping=mapping)


# --------------------------------------------------------------------------------------
# Pure transforms
# --------------------------------------------------------------------------------------


def _F():
    from pyspark.sql import functions as F

    return F


def parse_lines(lines: "DataFrame", layout: Layout) -> "DataFrame":
    """Text lines (``value``, ``source_file``) -> ``source_file, raw, fields, parse_error``.

    ``fields`` maps each source column to its text (null for a malformed line). Header lines and
    blank lines are not rows and are dropped here.
    """
    F = _F()
    text, enc_error = _decode(F.col("value"), layout.encoding)
    raw = F.regexp_replace(text, "^\ufeff", "")
    df = lines.select(F.col("source_file"), raw.alias("raw"), enc_error.alias("enc_error"))
    df = df.where(F.trim(F.col("raw")) != "")
    if layout.header_line:
        df = df.where(F.col("raw") != F.lit(layout.header_line))
    enc_error = F.col("enc_error")

    # Each parsed value below is a column of its own, read by name (see to_contract): written as one
    # expression, every field taken from the parsed line would parse the line again.
    if layout.format == "json":
        df = df.select("*", F.from_json(F.col("raw"), "map<string,string>").alias(_hidden("json")))
        fields = F.col(_hidden("json"))
        keys = F.map_keys(fields)
        bad = enc_error.isNotNull() | fields.isNull() | (F.size(keys) != F.size(F.array_distinct(keys)))
        return df.select(
            "source_file", "raw",
            F.when(~bad, fields).alias("fields"),
            F.when(bad, F.coalesce(enc_error, F.lit(R_MALFORMED_JSON))).alias("parse_error"),
        )

    if layout.format != "csv":
        raise ValueError(f"parse_lines reads csv or json lines, not {layout.format!r}")
    n = len(layout.columns)
    # Quoted sections may hold the delimiter: drop them before counting fields. (Each expression
    # names a column once: a filter pushed below this projection copies what it references.)
    unquoted = F.regexp_replace(F.col("raw"), '"(?:[^"]|"")*"', "")
    n_fields = F.size(F.split(unquoted, _java_literal(layout.delimiter), -1))
    schema = ", ".join(f"c{i} string" for i in range(n))
    # nullValue: a text no line holds, so only an unquoted empty field is null and a quoted ""
    # stays an empty text (Spark reads both as null by default); the row hash tells them apart.
    parsed = F.from_csv(F.col("raw"), schema, {"sep": _spark_sep(layout.delimiter), "escape": '"',
                                               "nullValue": "\u0000", "mode": "PERMISSIVE"})
    n_quotes = F.length("raw") - F.length(F.replace(F.col("raw"), F.lit('"'), F.lit("")))
    error = (F.when(enc_error.isNotNull(), enc_error)
             .when(n_quotes % 2 == 1, F.lit(R_UNBALANCED_QUOTE))
             .when(n_fields != F.lit(n), F.lit(R_FIELD_COUNT)))
    csv = _hidden("csv")
    df = df.select("source_file", "raw", error.alias("parse_error"))
    df = df.select("*", F.when(F.col("parse_error").isNull(), parsed).alias(csv))
    fields = F.map_from_arrays(
        F.array(*[F.lit(c) for c in layout.columns]),
        F.array(*[F.col(csv).getField(f"c{i}") for i in range(n)]),
    )
    return df.select("source_file", "raw", F.when(F.col(csv).isNotNull(), fields).alias("fields"), "parse_error")


def _decode(value: "Column", encoding: str) -> tuple["Column", "Column"]:
    """A line as read (Spark's text source hands over the file's bytes unchecked) -> (its text,
    the quarantine reason when its bytes are not text in ``encoding``, else null).

    A line that is not valid UTF-8 keeps its bytes as Latin-1 text, one character per byte,
    so the quarantined row loses nothing and shows which encoding to pass.
    """
    F = _F()
    if encoding not in ENCODINGS:
        raise ConfigError(f"ingest.source.encoding {encoding!r} is not supported; choose from {', '.join(ENCODINGS)}")
    as_bytes = value.cast("binary")
    reason = F.lit(R_ENCODING.format(encoding=encoding))
    if encoding == "latin-1":
        return F.decode(as_bytes, "ISO-8859-1"), F.lit(None).cast("string")
    if encoding == "ascii":
        bad = value.rlike("[^\\x00-\\x7F]")
    else:
        bad = ~F.is_valid_utf8(value)
    return (F.when(bad, F.decode(as_bytes, "ISO-8859-1")).otherwise(value),
            F.when(bad, reason))


def parse_parquet(rows: "DataFrame") -> "DataFrame":
    """Parquet rows (their columns plus ``source_file``) -> ``source_file, raw, fields, parse_error``.

    ``raw`` is the row as JSON; timestamp columns become ISO-8601 text with their UTC offset so
    that they parse back to the same instant.
    """
    F = _F()
    from pyspark.sql.types import TimestampNTZType, TimestampType

    cols = [c for c in rows.columns if c != "source_file"]
    texts = []
    for f in rows.schema.fields:
        if f.name == "source_file":
            continue
        c = F.col(f"`{f.name}`")
        if isinstance(f.dataType, (TimestampType, TimestampNTZType)):
            texts.append(F.date_format(c, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"))
        else:
            texts.append(c.cast("string"))
    return rows.select(
        F.col("source_file"),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in cols])).alias("raw"),
        F.map_from_arrays(F.array(*[F.lit(c) for c in cols]), F.array(*texts)).alias("fields"),
        F.lit(None).cast("string").alias("parse_error"),
    )


# What Java's regex classes \s and \p{Z} match: ASCII white space, and Unicode's space, line and
# paragraph separators (NBSP, the ideographic space, ...). Trimming them with btrim (a scan from
# each end) instead of a regex is what every field of every row pays.
PADDING = " \t\n\x0b\x0c\r\u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def _missing_to_null(c: "Column", null_values: tuple[str, ...] = ()) -> "Column":
    """The trimmed text, or null when it is empty, whitespace only or one of ``null_values``."""
    return _null_if_missing(_trim(c), null_values)


def _trim(c: "Column") -> "Column":
    # F.trim strips spaces only; a tab- or NBSP-padded id is padded all the same.
    F = _F()
    return F.btrim(c, F.lit(PADDING))


def _null_if_missing(trimmed: "Column", null_values: tuple[str, ...] = ()) -> "Column":
    F = _F()
    keep = trimmed != ""
    if null_values:
        keep = keep & ~trimmed.isin(*null_values)
    return F.when(keep, trimmed)


def _finite(x: "Column") -> "Column":
    """A double, or null when it is NaN or infinite."""
    F = _F()
    return F.when(~F.isnan(x) & (F.abs(x) != F.lit(float("inf"))), x)


def _hidden(name: str) -> str:
    return f"__ebbtide_{name}"


def with_expressions(parsed: "DataFrame", layout: Layout) -> "DataFrame":
    """Parsed rows plus one ``__ebbtide_expr_<field>`` text column per ``expr:`` mapping.

    An expression sees every source column the layout knows by name (CSV, Parquet), as text with
    missing values already null, and ``fields``, the map of all of them (the only way to reach a
    JSON key, e.g. ``fields['day']``). Spark runs with ANSI on: use try_* functions in
    expressions, or one bad row fails the batch instead of going to quarantine.
    """
    F = _F()
    exprs = layout.expressions
    if not exprs:
        return parsed
    own = parsed.columns
    view = parsed.select(
        *[F.col(c).alias(_hidden(c)) for c in own],
        *([F.col("fields")] if "fields" not in layout.columns else []),
        *[_missing_to_null(F.try_element_at(F.col("fields"), F.lit(c)), layout.null_values).alias(c)
          for c in layout.columns],
    )
    view = view.select("*", *[F.expr(e).cast("string").alias(_hidden(f"expr_{f}")) for f, e in exprs.items()])
    return view.select(*[F.col(_hidden(c)).alias(c) for c in own],
                       *[F.col(_hidden(f"expr_{f}")) for f in exprs])


def row_hash(ts_column: Optional[str] = None, ts_us: Optional["Column"] = None,
             columns: tuple[str, ...] = ()) -> "Column":
    """sha2-256 of every source column of the row as read: ``[[name, text], ...]`` sorted by
    name, as JSON, so a null (``null``) and an empty text (``""``) differ and no text can
    imitate a field boundary. Null for a row that did not parse (it goes to quarantine).

    The timestamp column (``ts_column``) enters as the instant it parses to (``ts_us``, epoch
    microseconds), not as its text, so one event written once in seconds and once in
    milliseconds (or ISO-8601) is one event.

    ``columns``: the keys every ``fields`` map holds, when they are known before reading (CSV and
    Parquet; empty for JSON, whose keys vary by line). The same JSON text is then built from
    them directly, sorted once here, instead of sorting each row's map entries with Spark's
    row-by-row (interpreted) higher-order functions; the id is the same either way."""
    F = _F()
    fields = F.col("fields")
    instant = None
    if ts_column is not None and ts_us is not None:
        instant = F.concat(F.lit("@us:"), F.round(ts_us).cast("long").cast("string"))
    if _static_keys(columns):
        def text(c: str) -> "Column":
            v = F.try_element_at(fields, F.lit(c))
            return F.when(ts_us.isNotNull(), instant).otherwise(v) if instant is not None and c == ts_column else v

        # Python orders str by code point, Spark orders strings by their UTF-8 bytes: the same order.
        pairs = F.array(*[F.array(F.lit(c), text(c)) for c in sorted(columns)])
        return F.when(fields.isNotNull(), F.sha2(F.to_json(pairs), 256))
    if instant is not None:
        fields = F.transform_values(
            fields, lambda k, v: F.when((k == F.lit(ts_column)) & ts_us.isNotNull(), instant).otherwise(v))
    pairs = F.transform(F.array_sort(F.map_entries(fields)), lambda e: F.array(e["key"], e["value"]))
    return F.sha2(F.to_json(pairs), 256)


def _static_keys(columns: tuple[str, ...]) -> bool:
    """Whether ``fields`` can be read by these known keys (distinct: a header naming a column twice
    fails the batch when Spark builds the map, as it did before this shortcut existed)."""
    return bool(columns) and len(set(columns)) == len(columns)


def to_contract(parsed: "DataFrame", layout: Layout) -> "DataFrame":
    """Parsed rows -> the contract's fields as text, ``extra`` (unmapped source columns),
    ``row_hash`` (every source column, for the fallback event id) and ``ts_us`` (the instant the
    timestamp text reads as, epoch microseconds; see :func:`ts_micros`).

    Each value that later steps read several times (a field's trimmed text, the timestamp's
    number) is a column of its own, computed once: Spark inlines a column's expression into
    every place that reads it only when that is cheap, so written as one nested expression the
    timestamp would be parsed a dozen times per row."""
    F = _F()
    m = layout.mapping
    exprs = layout.expressions
    parsed = with_expressions(parsed, layout)
    names = [f for f in CONTRACT_FIELDS if f in m]

    def source(name: str) -> "Column":
        if name in exprs:
            return F.col(_hidden(f"expr_{name}"))
        return F.try_element_at(F.col("fields"), F.lit(m[name]))

    trimmed = parsed.select("*", *[_trim(source(f)).alias(_hidden(f"text_{f}")) for f in names])

    def get(name: str) -> "Column":
        if name not in m:
            return F.lit(None).cast("string")
        return _null_if_missing(F.col(_hidden(f"text_{name}")), layout.null_values)

    if layout.event_type_const is not None:
        et = F.lit(layout.event_type_const)
    else:
        et = F.lower(get("event_type"))
        for src_value, contract_value in layout.event_type_map.items():
            et = F.when(et == F.lit(src_value), F.lit(contract_value)).otherwise(et)
    et = F.coalesce(et, F.lit(layout.event_type_default))

    # Columns an expression reads stay in extra: which ones it reads is the expression's business.
    used = sorted({c for f, c in m.items() if f not in exprs})
    # Parquet rows and CSV lines hold a fixed set of source columns (the layout's, in file order).
    columns = layout.columns if layout.format in ("csv", "parquet") else ()
    if not used:
        extra = F.col("fields")
    elif _static_keys(columns):
        rest = [c for c in columns if c not in used]  # in the map's own (file) order
        fields = F.col("fields")
        extra = F.when(fields.isNotNull(), F.map_from_arrays(
            F.array(*[F.lit(c) for c in rest]).cast("array<string>"),
            F.array(*[F.try_element_at(fields, F.lit(c)) for c in rest]).cast("array<string>")))
    else:
        extra = F.map_filter(F.col("fields"), lambda k, v: ~k.isin(*used))
    out = ["source_file", "raw", "parse_error", "user_id", "item_id", "ts_text", "event_type", "source_event_id",
           "value_text", "category", "source_session_id", "extra"]
    contract = trimmed.select(
        "source_file", "raw", "parse_error", "fields",
        get("user_id").alias("user_id"),
        get("item_id").alias("item_id"),
        get("ts").alias("ts_text"),
        et.alias("event_type"),
        get("event_id").alias("source_event_id"),
        get("value").alias("value_text"),
        get("category").alias("category"),
        get("session_id").alias("source_session_id"),
        extra.cast("map<string,string>").alias("extra"),
    )
    timed = with_ts_micros(contract, layout.ts_unit)
    ts_column = None if "ts" in exprs else m.get("ts")
    return timed.select(*out, row_hash(ts_column, F.col("ts_us"), columns).alias("row_hash"), "ts_us")


def ts_micros(ts_text: "Column", unit: str, number: Optional["Column"] = None) -> "Column":
    """Epoch microseconds (double) of a timestamp text: epoch s / ms / us / ns, or ISO-8601 (no
    offset = UTC; a date alone is its midnight UTC). ``number``: the text read as a finite double
    (or null), when it is already a column (:func:`with_ts_micros`)."""
    F = _F()
    if number is not None:
        num = number
    else:
        num = F.expr("try_cast(null as double)") if unit == "iso" else _finite(ts_text.try_cast("double"))
    iso = F.unix_micros(F.try_to_timestamp(ts_text)).cast("double")
    if unit in _UNIT_MICROS:
        return num * _UNIT_MICROS[unit]
    if unit == "iso":
        return iso
    if unit == "auto":
        a = F.abs(num)
        by_size = (F.when(a < MS_THRESHOLD, num * 1e6).when(a < US_THRESHOLD, num * 1e3)
                   .when(a < NS_THRESHOLD, num).otherwise(num * 1e-3))
        return F.when(num.isNotNull(), by_size).otherwise(iso)
    raise ValueError(f"ts_unit must be one of {', '.join(TS_UNITS)}, got {unit!r}")


def with_ts_micros(df: "DataFrame", unit: str) -> "DataFrame":
    """``df`` plus ``ts_us``, :func:`ts_micros` of its ``ts_text``, with the text read as a number
    once (a column of its own) rather than once per place the unit rules look at it."""
    F = _F()
    if unit not in TS_UNITS:
        raise ValueError(f"ts_unit must be one of {', '.join(TS_UNITS)}, got {unit!r}")
    num = _hidden("ts_number")
    number = F.lit(None).cast("double") if unit == "iso" else _finite(F.col("ts_text").try_cast("double"))
    return (df.select("*", number.alias(num))
            .select("*", ts_micros(F.col("ts_text"), unit, F.col(num)).alias("ts_us")).drop(num))


def ts_bounds(ingest: IngestConf, now: Optional[float] = None) -> tuple[float, float]:
    """[min_ts, now + max_future_days] as epoch seconds."""
    lo = parse_utc(ingest.min_ts, "ingest.min_ts")
    now = time.time() if now is None else now
    return lo.timestamp(), now + ingest.max_future_days * 86400.0


def validate(contract: "DataFrame", ts_unit: str, min_ts_s: float, max_ts_s: float) -> "DataFrame":
    """Typed ``ts`` and ``value``, and ``reason``: null for a good row, else the first broken rule."""
    F = _F()
    if "ts_us" not in contract.columns:
        contract = with_ts_micros(contract, ts_unit)
    us = F.col("ts_us")
    in_range = (us >= F.lit(min_ts_s * 1e6)) & (us <= F.lit(max_ts_s * 1e6))
    typed = contract.select("*", _finite(F.col("value_text").try_cast("double")).alias("value"))
    value = F.col("value")
    reason = (
        F.when(F.col("parse_error").isNotNull(), F.col("parse_error"))
        .when(F.col("user_id").isNull(), F.lit(R_MISSING_USER))
        .when(F.col("item_id").isNull(), F.lit(R_MISSING_ITEM))
        .when(F.col("ts_text").isNull(), F.lit(R_MISSING_TS))
        .when(us.isNull(), F.lit(R_UNPARSABLE_TS))
        .when(~in_range, F.lit(R_TS_RANGE))
        .when(F.col("value_text").isNotNull() & value.isNull(), F.lit(R_BAD_VALUE))
    )
    ts = F.when(in_range, F.timestamp_micros(F.round(us).cast("long")))
    return typed.select(*contract.columns, ts.alias("ts"), value, reason.alias("reason"))


def event_id_col() -> "Column":
    """The source's id, else ``row_hash``: a hash of the whole source row.

    Hashing every source column, not only the mapped ones, keeps two events that differ in any
    column (a price, a device, a second timestamp column) apart, while the same row read again
    (a replayed batch, a file copied twice) gets the same id and is deduplicated.
    """
    F = _F()
    return F.coalesce(F.col("source_event_id"), F.col("row_hash"))


BRONZE_COLUMNS = BRONZE_SPEC.names


def _bronze_columns() -> list:
    """The bronze columns of validated rows, lineage (the last two) aside."""
    F = _F()
    return [
        event_id_col().alias("event_id"),
        "user_id", "item_id", "event_type", "ts",
        F.to_date("ts").alias("event_date"),
        "value", "category", "source_session_id", "extra", "source_file",
    ]


def _lineage(run_id: str) -> list:
    F = _F()
    return [F.lit(run_id).alias("ingest_run_id"), F.current_timestamp().alias("ingested_at")]


def to_bronze(good: "DataFrame", run_id: str) -> "DataFrame":
    """Validated good rows -> bronze_events rows (not yet deduplicated)."""
    return good.select(*_bronze_columns(), *_lineage(run_id))


def stage(rows: "DataFrame") -> "DataFrame":
    """Validated rows -> what a micro-batch keeps while it writes: the bronze columns of every row
    but the run's lineage (:func:`with_lineage` adds it), ``reason``, ``raw`` for the bad rows only
    (a good row's line is not needed again, and it is most of the row's bytes) and
    ``has_source_id`` (whether event_id is the source's own id).

    Nothing here reads the clock: a cached plan that holds ``current_timestamp()`` is not found
    again by Delta's MERGE, which plans its source anew, so it would parse the files again."""
    F = _F()
    bad = F.col("reason").isNotNull()
    return rows.select(*_bronze_columns(), "reason", F.when(bad, F.col("raw")).alias("raw"),
                       F.col("source_event_id").isNotNull().alias("has_source_id"))


def with_lineage(staged: "DataFrame", run_id: str) -> "DataFrame":
    """Staged rows (:func:`stage`) -> bronze_events rows."""
    return staged.select(*BRONZE_COLUMNS[:-2], *_lineage(run_id))


def dedupe_events(bronze: "DataFrame") -> "DataFrame":
    """One row per event_id; which copy survives is deterministic (first source file, then fields)."""
    F = _F()
    from pyspark.sql import Window

    w = Window.partitionBy("event_id").orderBy(
        F.col("source_file").asc_nulls_last(), "ts", "user_id", "item_id",
        F.col("category").asc_nulls_first(), F.col("source_session_id").asc_nulls_first(),
        F.col("value").asc_nulls_first(), F.to_json("extra").asc_nulls_first(),
    )
    return bronze.withColumn("_n", F.row_number().over(w)).where("_n = 1").drop("_n")


def to_quarantine(bad: "DataFrame", run_id: str) -> "DataFrame":
    """Rejected rows -> quarantine_events rows.

    Identical bad lines of one file stay distinct rows: the id hashes the line's occurrence
    number among its identical copies, so a replayed file maps to the same ids again.
    """
    F = _F()
    from pyspark.sql import Window

    occurrence = F.row_number().over(Window.partitionBy("source_file", "raw").orderBy("raw"))
    qid = F.sha2(F.concat_ws(_SEP, F.col("source_file"), F.col("raw"), occurrence.cast("string")), 256)
    return bad.select(
        qid.alias("quarantine_id"), "source_file", "raw", "reason",
        F.lit(run_id).alias("ingest_run_id"),
        F.current_timestamp().alias("quarantined_at"),
    )


def prepare(batch: "DataFrame", layout: Layout, min_ts_s: float, max_ts_s: float) -> "DataFrame":
    """A micro-batch as read (text lines, or Parquet rows) -> validated contract rows with ``reason``."""
    parsed = parse_parquet(batch) if layout.format == "parquet" else parse_lines(batch, layout)
    return validate(to_contract(parsed, layout), layout.ts_unit, min_ts_s, max_ts_s)


def date_ranges(days: list, max_ranges: int = 16) -> list[tuple]:
    """Days (``datetime.date``) -> at most ``max_ranges`` closed ranges ``(first, last)`` that cover
    them all: runs of consecutive days, and where there are more runs than that, the runs either
    side of the narrowest gaps joined (a range may then cover days that hold no row: it prunes
    less, never wrongly)."""
    import datetime as dt

    runs: list[list] = []
    for d in sorted(set(days)):
        if runs and d - runs[-1][1] == dt.timedelta(days=1):
            runs[-1][1] = d
        else:
            runs.append([d, d])
    if len(runs) > max_ranges:
        widest = sorted(range(1, len(runs)), key=lambda i: (runs[i][0] - runs[i - 1][1], i), reverse=True)
        cuts = sorted(widest[: max_ranges - 1]) + [len(runs)]
        whole, runs, first = runs, [], 0
        for c in cuts:
            runs.append([whole[first][0], whole[c - 1][1]])
            first = c
    return [(lo, hi) for lo, hi in runs]


def date_predicate(column: str, ranges: list[tuple]) -> str:
    """SQL: ``column`` falls in one of ``ranges`` (from :func:`date_ranges`)."""
    return " OR ".join(f"{column} = DATE'{lo.isoformat()}'" if lo == hi else
                       f"{column} BETWEEN DATE'{lo.isoformat()}' AND DATE'{hi.isoformat()}'" for lo, hi in ranges)


def known_events(bronze: "DataFrame", days: list[tuple], id_range: Optional[tuple[str, str]]) -> "DataFrame":
    """The bronze rows (``event_id``, ``source_file``) that a batch's events can match, read from
    only the files that can hold one, so a night reads what its own data touches, not all of bronze.

    - An id hashed from the source row covers the timestamp's instant, so a row with the same id
      has the same ``event_date``: the batch's days (``days``, from :func:`date_ranges`) hold every
      match, and bronze is partitioned by that column.
    - A source's own id says nothing about the day (the same id may come back with another
      timestamp), so those are looked up by their id range (``id_range``: the batch's smallest and
      largest); Delta skips the files whose min/max event_id fall outside it, which prunes well
      for ids that grow with time (sequences, time-ordered UUIDs) and reads every file for random
      ones: exact either way.
    """
    F = _F()
    parts = []
    if days:
        parts.append(bronze.where(F.expr(date_predicate("event_date", days))))
    if id_range is not None:
        parts.append(bronze.where(F.col("event_id").between(F.lit(id_range[0]), F.lit(id_range[1]))))
    if not parts:
        return bronze.select("event_id", "source_file").limit(0)
    out = parts[0].select("event_id", "source_file")
    for part in parts[1:]:
        out = out.unionByName(part.select("event_id", "source_file"))
    return out


def mark_known(events: "DataFrame", known: Optional["DataFrame"], batch_files: list[str]) -> "DataFrame":
    """``events`` (one row per event id) plus ``_known``: null when bronze holds no row with the id
    (insert it), 1 when it holds one from another file (a duplicate), 0 when only rows from this
    batch's own files: those can only have been written by an earlier attempt of this same batch
    that crashed before its checkpoint (the file source hands each file to one batch), so the
    event is not inserted again but still counts as this batch's new row, and a replay reports
    what the first attempt would have."""
    F = _F()
    if known is None:
        return events.withColumn("_known", F.lit(None).cast("int"))
    own = F.coalesce(F.col("source_file").isin(*batch_files), F.lit(True)) if batch_files else F.lit(False)
    flags = known.groupBy("event_id").agg(F.max(F.when(own, 0).otherwise(1)).alias("_known"))
    return events.join(flags, "event_id", "left")


def decide(ids: "DataFrame", known: Optional["DataFrame"], batch_files: list[str]) -> "DataFrame":
    """The event ids of a batch's good rows -> one row per distinct id: ``copies`` (how many of the
    batch's rows hold it) and ``_known`` (as :func:`mark_known` says). It needs the ids alone, so
    only they cross a shuffle, never whole rows."""
    F = _F()
    return mark_known(ids.groupBy("event_id").agg(F.count(F.lit(1)).alias("copies")), known, batch_files)


# Above this many ids that need a second look (repeated in the batch, or already in bronze), they are
# joined to the batch's rows by shuffling both instead of sending them to every task (~100 bytes each).
BROADCAST_IDS = 500_000


def rows_to_insert(rows: "DataFrame", exceptions: "DataFrame", broadcast: bool = True,
                   known_too: bool = False) -> "DataFrame":
    """A batch's good rows (bronze columns) that bronze lacks, one per event id.

    ``exceptions``: the rows of :func:`decide` whose id more than one of the batch's rows holds, or
    bronze already has; usually few. Every other row is inserted as it is, so the batch's whole rows
    are joined to that short list where they lie (``broadcast``), not shuffled and sorted by id;
    only the rows of a repeated new id are, to keep one of them (:func:`dedupe_events`).

    ``known_too``: one row for every id of the batch, bronze's too: the source of a MERGE that
    deletes what it does not match (``--reread replace``), where a kept id must be matched."""
    F = _F()
    ex = exceptions.select("event_id", "copies", "_known")
    tagged = rows.join(F.broadcast(ex) if broadcast else ex, "event_id", "left")
    single = tagged.where(F.col("copies").isNull()).select(*BRONZE_COLUMNS)
    second_look = F.col("copies").isNotNull() if known_too else (F.col("copies") > 1) & F.col("_known").isNull()
    repeated = tagged.where(second_look).select(*BRONZE_COLUMNS)
    return single.unionByName(dedupe_events(repeated))


# --------------------------------------------------------------------------------------
# I/O: source discovery, the stream, the per-batch writes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A resolved source: the glob the stream watches and the files matching it now."""

    conf: SourceConf
    folder: str
    glob: str
    files: list[str]

    @property
    def pattern(self) -> str:
        return f"{self.folder.rstrip('/')}/{self.glob}"

    @property
    def stream_id(self) -> str:
        """Names the checkpoint: the same files read the same way share one. Every setting that
        changes what a line becomes is part of the key, so a rerun with a corrected delimiter,
        null marker, mapping or encoding reads the files again (rows it now accepts land in
        bronze; rows already there dedupe on event_id) instead of finding them all done. Rows
        that such a reading gives new event ids are refused or replace the file's old rows
        (:func:`check_reread`, ``--reread``), never inserted beside them."""
        c = self.conf
        key = json.dumps([self.pattern, c.format, c.adapter, c.csv_delimiter, c.csv_header, list(c.null_values),
                          sorted(c.columns.items()), c.ts_unit, c.encoding, c.event_type_default])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def _hadoop_fs(spark: "SparkSession", path: str):
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    return p, p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def _single_file_glob(name: str) -> str:
    """A glob matching exactly one file name. The file source needs a glob, not a plain file path
    (it takes a plain path for the folder of a partitioned table)."""
    return "{" + re.sub(r"([\\*?\[\]{},])", r"\\\1", name) + "}"


def discover(spark: "SparkSession", src: SourceConf) -> Source:
    """Resolve ``src.path`` (a folder, or one file) into the stream's glob and the files now there."""
    from ebbtide.config import _is_uri

    if not src.path:
        raise ConfigError("no source to ingest: pass --source PATH or set ingest.source.path")
    path = src.path
    if not _is_uri(path):
        import os

        path = os.path.abspath(os.path.expanduser(path))
    p, fs = _hadoop_fs(spark, path)
    if not fs.exists(p):
        raise FileNotFoundError(f"source {path} does not exist; pass --source PATH (a folder or a file)")
    qualified = fs.makeQualified(p)
    if fs.getFileStatus(p).isFile():
        folder, glob = qualified.getParent().toString(), _single_file_glob(p.getName())
    else:
        folder, glob = qualified.toString(), src.file_glob or "*"
    gp, _ = _hadoop_fs(spark, f"{folder.rstrip('/')}/{glob}")
    statuses = fs.globStatus(gp) or []
    files = sorted(
        s.getPath().toString() for s in statuses
        if s.isFile() and not s.getPath().getName().startswith(("_", "."))
    )
    return Source(conf=src, folder=folder, glob=glob, files=files)


def _first_line(spark: "SparkSession", file: str, encoding: str = "utf-8") -> Optional[str]:
    """The first line of a file (its header, for CSV), read through Hadoop's FileSystem so that
    it works on any store Spark reads and decompresses what Spark would; no Spark job. None for
    an empty file."""
    jvm = spark.sparkContext._jvm
    p, fs = _hadoop_fs(spark, file)
    stream = fs.open(p)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(
        spark.sparkContext._jsc.hadoopConfiguration()).getCodec(p)
    if codec is not None:
        stream = codec.createInputStream(stream)
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, ENCODINGS.get(encoding, "UTF-8")))
    try:
        line = reader.readLine()
        return None if line is None else line.lstrip("\ufeff")
    finally:
        reader.close()


def _first_header(spark: "SparkSession", files: list[str], encoding: str) -> Optional[str]:
    """The first line of the first file that has one: empty files (a rotated log not yet
    written) say nothing about the layout and must not stop the others."""
    for f in files:
        line = _first_line(spark, f, encoding)
        if line is not None and line.strip():
            return line
    return None


def parquet_schema(spark: "SparkSession", files: list[str]):
    """The schema of a Parquet source, merged over its files: a file with extra or missing columns
    (schema drift) is read with nulls where it has no value, so its rows are quarantined for the
    missing field instead of failing the batch. Raises ConfigError when files disagree on a
    column's type."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        return spark.read.option("mergeSchema", "true").parquet(*files).schema
    except (PySparkException, Py4JJavaError) as e:
        text = str(e)
        if "CANNOT_MERGE" not in text and "merge" not in text.lower():
            raise
        # Spark names the two schemas on the lines after its headline: show them, not the headline.
        schemas = re.findall(r'"STRUCT<[^"]*>"', text)
        shown = " vs ".join(schemas[:2]) if schemas else text.strip().splitlines()[0][:300]
        raise ConfigError(f"the Parquet files of this source disagree on a column's type ({shown}); "
                          "ingest them as separate sources (--glob), or rewrite them with one type") from None


def _ensure_table(spark: "SparkSession", cfg, spec: catalog.TableSpec) -> None:
    from ebbtide import tables

    if not tables.exists(spark, cfg, spec.name):
        tables.write(spark.createDataFrame([], spec.spark_schema()), cfg, spec.name, mode="merge", keys=spec.keys,
                     partition_by=spec.partition_by, comment=spec.comment)


# --------------------------------------------------------------------------------------
# A file read again under other settings (another checkpoint): refuse, or replace its rows
# --------------------------------------------------------------------------------------

# ``ingest --reread``: what a batch does with a file bronze already holds rows of, read before
# under other settings, when this reading gives some of its rows new event ids.
REREAD_MODES = ("refuse", "replace")
# At most this many files are named in the refusal (the rest are counted).
_REREAD_SHOWN = 3


class RereadError(ValueError):
    """A batch would ingest rows of already-ingested files a second time, under new event ids;
    raised before the batch writes anything. The message names the files and the fix."""


@dataclass(frozen=True)
class Reread:
    """What a batch reads again (see :func:`check_reread`).

    ``earlier``: batch files that ``ops_ingest_log`` records under another stream or batch ->
    when (epoch microseconds of the latest such row): bronze rows of such a file ingested up to
    then were written by that earlier read, later ones by an earlier attempt of this batch.
    ``replace``: files whose bronze rows this reading does not produce, deleted by the bronze
    MERGE (``--reread replace``); ``replaced``: how many rows that deletes.
    """

    earlier: dict[str, int] = field(default_factory=dict)
    replace: tuple[str, ...] = ()
    replaced: int = 0

    def own_files(self, files: list[str]) -> list[str]:
        """The batch files whose bronze rows can only come from an earlier attempt of this batch."""
        return [f for f in files if f not in self.earlier]

    def prior(self, existing: Optional["DataFrame"]) -> Optional["DataFrame"]:
        """``existing`` (bronze) without the rows an earlier attempt of this batch wrote for files
        read before: with :meth:`own_files`, what :func:`mark_known` compares against, so a file's
        rows that an earlier read already holds count as duplicates, and a replay still reports
        what its first attempt would have."""
        if existing is None or not self.earlier:
            return existing
        F = _F()
        at = existing.sparkSession.createDataFrame(sorted(self.earlier.items()), "source_file string, _read_at long")
        own = F.col("_read_at").isNotNull() & (F.unix_micros("ingested_at") > F.col("_read_at"))
        return (existing.join(F.broadcast(at), "source_file", "left")
                .where(~F.coalesce(own, F.lit(False))).drop("_read_at"))

    @property
    def delete_unmatched(self) -> Optional[str]:
        """The bronze MERGE's delete clause (target alias ``t``): the replaced files' rows that no
        row of the batch matches on event_id."""
        if not self.replace:
            return None
        from ebbtide.tables import _sql_str

        return f"t.source_file IN ({', '.join(_sql_str(f) for f in self.replace)})"

    def merge_filter(self, days: list[tuple], id_range: Optional[tuple[str, str]]) -> Optional[str]:
        """The bronze MERGE's ``merge_filter`` for a batch whose events fall on ``days`` and whose
        own ids span ``id_range`` (see :func:`known_events`).

        A plain batch inserts only ids that bronze lacks, all on its days: the days bound the match.
        A batch that replaces files also sends the ids bronze has (:func:`rows_to_insert`,
        ``known_too``), and its delete clause removes every row of those files that nothing
        matches. A kept row must therefore stay matchable wherever it lies: a source's own id
        read with another timestamp setting keeps its old row on another day, found by the id
        range as :func:`known_events` found it; a row only bronze has is matched by nothing and
        goes. The replaced files are named too, so all their old rows are in the MERGE's scope
        whichever day they lie on, not just the batch's."""
        from ebbtide.tables import _sql_str

        scope = [date_predicate("t.event_date", days)] if days else []
        if not self.replace:
            return " OR ".join(scope) or None
        if id_range is not None:
            scope.append(f"t.event_id BETWEEN {_sql_str(id_range[0])} AND {_sql_str(id_range[1])}")
        scope.append(self.delete_unmatched)
        return " OR ".join(f"({p})" for p in scope)


def check_reread(rows: "DataFrame", bronze: Optional["DataFrame"], quarantine: Optional["DataFrame"],
                 ops_log: Optional["DataFrame"], files: list[str], stream_id: str, batch_id: int,
                 mode: str = "refuse", lines: Optional["DataFrame"] = None) -> Reread:
    """Whether this batch reads again files that bronze already holds rows of, and what then.

    ``rows`` is the batch as :func:`prepare` makes it, or as :func:`stage` keeps it. Staged rows
    lack the text of the good lines, which the rescue check below compares with quarantine's:
    ``lines`` (the batch as :func:`prepare` makes it, uncached) then gives it, evaluated only
    when a batch file was read before (those files' rows alone, parsed once more and cached for
    the checks), so a batch of new files is still parsed once. A batch file that bronze holds
    rows of was read before: by an earlier attempt of this batch (a replay after a crash), or
    under other settings (another checkpoint). Per such file:

    - *held*: its bronze rows whose event_id this reading does not produce (read another way);
    - *fresh*: its rows this reading would insert (event_id not in bronze), less the *rescued*
      ones: rows that quarantine holds with the same text (``source_file``, ``raw``), which a
      corrected setting now parses (the documented way out of quarantine).

    A file with both held and fresh rows would be in bronze twice, once per reading. With mode
    ``refuse`` that raises :class:`RereadError` naming the files, before anything is written;
    with ``replace`` the held rows of every read-again file are deleted in the same MERGE that
    inserts the batch (:attr:`Reread.delete_unmatched`), so a file's rows are exactly this
    reading's. The same settings give the same ids, so a replay has no held or fresh rows.
    """
    F = _F()
    if mode not in REREAD_MODES:
        raise ConfigError(f"--reread {mode!r}: choose from {', '.join(REREAD_MODES)}")
    if bronze is None or ops_log is None or not files:
        return Reread()
    # ops_ingest_log (one small row per batch) says which files were read before; only those are
    # looked up in bronze, so a batch of new files costs no scan of bronze. (A file whose only
    # earlier read crashed before its log row was this batch's own attempt: same ids, nothing to do.)
    others = ops_log.where(~((F.col("stream_id") == F.lit(stream_id)) & (F.col("batch_id") == F.lit(batch_id))))
    earlier = {r[0]: int(r[1]) for r in (
        others.select(F.explode("files").alias("source_file"), F.unix_micros("processed_at").alias("at"))
        .where(F.col("source_file").isin(*files)).groupBy("source_file").agg(F.max("at")).collect())
        if r[1] is not None}
    if not earlier:
        return Reread()
    seen = sorted(r[0] for r in bronze.where(F.col("source_file").isin(*earlier))
                  .select("source_file").distinct().collect())
    if not seen:
        return Reread()
    earlier = {f: earlier[f] for f in seen}

    good = rows.where(F.col("reason").isNull())
    ids = good.select(_event_id(good).alias("event_id")).distinct()
    key = ["source_file", "user_id", "item_id", "ts", "event_type"]
    old = bronze.where(F.col("source_file").isin(*seen)).select("event_id", *key)
    held = old.join(ids, "event_id", "left_anti")
    texts, cached = good, None
    if lines is not None:
        from pyspark import StorageLevel

        # The read-before files' rows, parsed once for the queries below and kept until they are
        # done. Filtered on source_file alone (a column the parse passes through): a filter on the
        # computed reason, pushed below the parse's projections, inlines the whole parse into its
        # condition once per reference, and compiling that generated code took minutes for a few rows.
        cached = (lines.where(F.col("source_file").isin(*seen))
                  .select(_event_id(lines).alias("event_id"), "raw", *key, "reason")
                  .persist(StorageLevel.MEMORY_AND_DISK))
        texts = cached.where(F.col("reason").isNull())
    try:
        fresh = (texts.where(F.col("source_file").isin(*seen))
                 .select(_event_id(texts).alias("event_id"), "raw", *key)
                 .join(bronze.select("event_id"), "event_id", "left_anti"))
        if quarantine is not None:
            q = quarantine.where(F.col("source_file").isin(*seen)).select("source_file", "raw").distinct()
            # A line quarantined for its bytes kept them as Latin-1 text: match that spelling too.
            as_latin1 = F.decode(F.encode(F.col("raw"), "UTF-8"), "ISO-8859-1")
            fresh = (fresh.join(q, ["source_file", "raw"], "left_anti")
                     .withColumn("_raw_bytes", as_latin1)
                     .join(q.withColumnRenamed("raw", "_raw_bytes"), ["source_file", "_raw_bytes"], "left_anti"))

        counts: dict[str, dict[str, int]] = {f: {"old": 0, "held": 0, "fresh": 0, "same": 0} for f in seen}
        for r in (old.join(ids.withColumn("_kept", F.lit(True)), "event_id", "left")
                  .groupBy("source_file")
                  .agg(F.count(F.lit(1)).alias("old"), F.count_if(F.col("_kept").isNull()).alias("held"))
                  .collect()):
            counts[r["source_file"]].update(old=int(r["old"]), held=int(r["held"]))
        fresh_ids = fresh.select("event_id", *key).distinct()
        for r in fresh_ids.groupBy("source_file").agg(F.countDistinct("event_id").alias("n")).collect():
            counts[r["source_file"]]["fresh"] = int(r["n"])
        twice = [f for f in seen if counts[f]["held"] and counts[f]["fresh"]]

        if twice and mode == "refuse":
            # The same user, item, instant and type as a row read the other way: the same event under a new id.
            same = fresh_ids.where(F.col("source_file").isin(*twice)).join(held, key, "left_semi")
            for r in same.groupBy("source_file").agg(F.countDistinct("event_id").alias("n")).collect():
                counts[r["source_file"]]["same"] = int(r["n"])
            shown = "; ".join(
                f"{f}: bronze holds {counts[f]['old']} of its rows ({counts[f]['held']} under ids this reading "
                f"does not give), this reading adds {counts[f]['fresh']} under new ids ({counts[f]['same']} with the "
                f"same user, item, ts and event type)" for f in twice[:_REREAD_SHOWN])
            more = f"; and {len(twice) - _REREAD_SHOWN} more file(s)" if len(twice) > _REREAD_SHOWN else ""
            # The fix first: the command line shows one line of at most 600 characters.
            raise RereadError(
                f"{len(twice)} file(s) read before with other settings would get new event ids, so bronze_events "
                f"would hold their rows twice; nothing was written. Rerun with the settings they were read with "
                f"(ops_ingest_log lists each stream_id's files) or add --reread replace to replace their bronze rows "
                f"with this reading in one commit: {shown}{more}")

        replace = tuple(f for f in seen if counts[f]["held"]) if mode == "replace" else ()
        replaced = sum(counts[f]["held"] for f in replace)
        if replace:
            log.warning("batch %d: --reread replace: %d file(s) were ingested before with other settings; their %d "
                        "bronze row(s) that this reading does not give are deleted in the bronze MERGE",
                        batch_id, len(replace), replaced)
        return Reread(earlier=earlier, replace=replace, replaced=replaced)
    finally:
        if cached is not None:
            cached.unpersist()


def _event_id(rows: "DataFrame") -> "Column":
    """The event id of prepared rows (:func:`event_id_col`) or of staged ones (a column already)."""
    return _F().col("event_id") if "event_id" in rows.columns else event_id_col()


class _BatchWriter:
    """The foreachBatch body: parse, validate, split, dedupe, then three idempotent MERGEs."""

    def __init__(self, ctx, source: Source, layout: Layout, bounds: tuple[float, float], reread: str = "refuse"):
        self.ctx, self.source, self.layout, self.bounds, self.reread = ctx, source, layout, bounds, reread
        self.batches: list[dict] = []
        # The RereadError that stopped the stream, raised again as itself by run().
        self.refused: Optional[RereadError] = None
        self._layouts: dict[str, Layout] = {}

    def _layout_for(self, header: Optional[str]) -> Layout:
        """The layout of a file whose first line is ``header``: the source's own when it matches,
        else one resolved from this header (columns added, dropped or reordered over time)."""
        if header is None or header == self.layout.header_line:
            return self.layout
        if header not in self._layouts:
            lay = resolve_layout(self.source.conf, header, strict=False)
            missing = [f for f in REQUIRED_FIELDS if f not in lay.mapping]
            log.warning("a file's header differs from the source's (%r, not %r): its rows are read by their own "
                        "header%s", header[:200], (self.layout.header_line or "")[:200],
                        f"; it lacks {', '.join(missing)}, so they go to quarantine" if missing else "")
            self._layouts[header] = lay
        return self._layouts[header]

    def prepare(self, batch: "DataFrame") -> "DataFrame":
        """The batch's validated rows, each file parsed with its own header when the source has
        headers: a file whose header differs (schema drift) must not be read by another file's
        column order, which would silently swap fields that happen to line up."""
        if self.layout.format != "csv" or self.layout.header_line is None:
            return prepare(batch, self.layout, *self.bounds)
        from pyspark.sql import functions as F

        spark = batch.sparkSession
        # The batch's files (a micro-batch hands them over as rows, not as a file list).
        files = sorted(r[0] for r in batch.select("source_file").distinct().collect())
        groups: dict[int, tuple[Layout, list[str]]] = {}
        for f in files:
            lay = self._layout_for(_first_line(spark, f, self.layout.encoding))
            groups.setdefault(id(lay), (lay, []))[1].append(f)
        if len(groups) <= 1:
            lay = next(iter(groups.values()))[0] if groups else self.layout
            return prepare(batch, lay, *self.bounds)
        parts = [prepare(batch.where(F.col("source_file").isin(*fs)), lay, *self.bounds)
                 for lay, fs in groups.values()]
        out = parts[0]
        for part in parts[1:]:
            out = out.unionByName(part)
        return out

    def __call__(self, batch: "DataFrame", batch_id: int) -> None:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        from ebbtide import tables

        cfg, run_id, spark = self.ctx.cfg, self.ctx.run_id, batch.sparkSession
        t0 = last = time.perf_counter()
        phases: dict[str, float] = {}

        def phase(name: str) -> None:
            nonlocal last
            now = time.perf_counter()
            phases[name] = now - last
            last = now

        # The batch is parsed once: every later step reads this cache, never the files again.
        prepared = self.prepare(batch)
        staged = stage(prepared).persist(StorageLevel.MEMORY_AND_DISK)
        decision = None
        try:
            # One pass fills the cache and says what the writes need: rows and bad rows per file, and
            # the days the good rows fall on (where bronze can hold a match).
            good = F.col("reason").isNull()
            own_id = good & F.col("has_source_id")
            parts = (
                staged.groupBy("source_file", F.when(good, F.col("event_date")).alias("day"))
                .agg(F.count(F.lit(1)).alias("n"), F.count("reason").alias("bad"),
                     F.count(F.when(own_id, 1)).alias("own_ids"))
                .collect()
            )
            files = sorted({r["source_file"] for r in parts})
            rows_read = sum(r["n"] for r in parts)
            quarantined = sum(r["bad"] for r in parts)
            days = date_ranges([r["day"] for r in parts if r["day"] is not None])
            id_range = None
            if any(r["own_ids"] for r in parts):
                # Apart from the count above: a min or max of text makes Spark sort all the rows.
                lo, hi = staged.where(own_id).agg(F.min("event_id"), F.max("event_id")).first()
                id_range = (lo, hi)
            log.info("batch %d: %d file(s), %d rows read, %d break the contract",
                     batch_id, len(files), rows_read, quarantined)
            phase("parse")
            reread = self._check_reread(staged, prepared, files, int(batch_id))  # before any write

            if quarantined:
                bad = to_quarantine(staged.where(~good), run_id)
                tables.write(QUARANTINE_SPEC.with_comments(bad), cfg, QUARANTINE, mode="merge",
                             keys=QUARANTINE_SPEC.keys, comment=QUARANTINE_SPEC.comment)
                phase("quarantine")

            new = 0
            if rows_read > quarantined or reread.replace:
                rows = with_lineage(staged.where(good), run_id)
                known = (known_events(reread.prior(tables.read(spark, cfg, BRONZE)), days, id_range)
                         if tables.exists(spark, cfg, BRONZE) else None)
                decision = (decide(rows.select("event_id"), known, reread.own_files(files))
                            .persist(StorageLevel.MEMORY_AND_DISK))
                counts = decision.agg(
                    F.count(F.lit(1)).alias("events"),
                    F.count(F.when(F.col("_known") == 1, 1)).alias("duplicates"),
                    F.count(F.when(F.col("_known").isNull(), 1)).alias("insert"),
                    F.count(F.when((F.col("copies") > 1) | F.col("_known").isNotNull(), 1)).alias("exceptions"),
                ).first()
                new = counts["events"] - counts["duplicates"]
                phase("dedupe")
                if counts["insert"] or reread.replace:
                    exceptions = decision.where((F.col("copies") > 1) | F.col("_known").isNotNull())
                    insert = rows_to_insert(rows, exceptions, broadcast=counts["exceptions"] <= BROADCAST_IDS,
                                            known_too=bool(reread.replace))
                    # Insert-only MERGE of the rows no bronze row has: a replay (or another writer
                    # committing the same rows meanwhile) inserts nothing twice. The match is
                    # confined to the batch's days, so Delta reads only those partitions; a
                    # replacing batch's scope takes in the replaced files (Reread.merge_filter).
                    tables.write(BRONZE_SPEC.with_comments(insert), cfg, BRONZE, mode="merge", keys=BRONZE_SPEC.keys,
                                 merge_filter=reread.merge_filter(days, id_range),
                                 delete_unmatched=reread.delete_unmatched,
                                 partition_by=BRONZE_SPEC.partition_by, comment=BRONZE_SPEC.comment)
                    phase("bronze")
        finally:
            # The one built on the other first: uncaching staged while decision is still cached
            # would make Spark plan decision's cache anew (seconds, for nothing).
            if decision is not None:
                decision.unpersist()
            staged.unpersist()

        stats = {
            "batch_id": int(batch_id), "files": files, "rows_read": int(rows_read),
            "rows_bronze_new": int(new), "rows_quarantined": int(quarantined),
            "rows_duplicate": int(rows_read - quarantined - new), "rows_bronze_replaced": reread.replaced,
        }
        entry = spark.createDataFrame(
            [(run_id, self.source.stream_id, self.source.pattern, stats["batch_id"], files,
              stats["rows_read"], stats["rows_bronze_new"], stats["rows_quarantined"],
              stats["rows_duplicate"])],
            OPS_LOG_SPEC.spark_schema(OPS_LOG_SPEC.names[:-1]),
        ).withColumn("processed_at", F.current_timestamp())
        # The row's own keys bound the match: Delta skips, by their min/max statistics, every file of
        # the log but the one that may hold this batch's row, however long the log grows.
        tables.write(OPS_LOG_SPEC.with_comments(entry), cfg, OPS_LOG, mode="merge", keys=OPS_LOG_SPEC.keys,
                     update_matched=True,
                     merge_filter=f"t.stream_id = '{self.source.stream_id}' AND t.batch_id = {int(batch_id)}",
                     comment=OPS_LOG_SPEC.comment)
        phase("log")
        stats["seconds"] = round(time.perf_counter() - t0, 2)
        self.batches.append(stats)
        log.info("batch %d: %d new bronze rows, %d quarantined, %d duplicates (%.1f s: %s)",
                 batch_id, new, quarantined, stats["rows_duplicate"], stats["seconds"],
                 ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))

    def _check_reread(self, staged: "DataFrame", prepared: "DataFrame", files: list[str],
                      batch_id: int) -> Reread:
        """:func:`check_reread` on this batch against the tables; a refusal is kept for run()."""
        from ebbtide import tables

        spark, cfg = staged.sparkSession, self.ctx.cfg
        have = {n: tables.read(spark, cfg, n) if tables.exists(spark, cfg, n) else None
                for n in (BRONZE, QUARANTINE, OPS_LOG)}
        try:
            return check_reread(staged, have[BRONZE], have[QUARANTINE], have[OPS_LOG], files,
                                self.source.stream_id, batch_id, self.reread, lines=prepared)
        except RereadError as e:
            self.refused = e
            raise


# Spark's whole-stage code generation fuses the parse of a line (decode, split, trim, the event id
# hash, the checks) into one Java method; past 8,000 bytes of bytecode HotSpot never compiles a
# method, so it ran interpreted, about 3x slower than the same work in smaller methods. With this
# limit (the value Spark's docs give for HotSpot) Spark generates code per operator instead, whose
# expressions are split into methods HotSpot compiles.
HUGE_METHOD_LIMIT = "spark.sql.codegen.hugeMethodLimit"
SPARK_HUGE_METHOD_DEFAULT = "65535"


class _jit_sized_codegen:
    """Sets ``spark.sql.codegen.hugeMethodLimit`` to 8000 for the ingest stream (and the session
    clone it runs in), unless the session already sets another value; unsets it afterwards."""

    def __init__(self, spark: "SparkSession"):
        self.spark, self.set = spark, False

    def __enter__(self):
        if self.spark.conf.get(HUGE_METHOD_LIMIT, SPARK_HUGE_METHOD_DEFAULT) == SPARK_HUGE_METHOD_DEFAULT:
            self.spark.conf.set(HUGE_METHOD_LIMIT, "8000")
            self.set = True
        return self

    def __exit__(self, *exc):
        if self.set:
            self.spark.conf.unset(HUGE_METHOD_LIMIT)
        return False


def checkpoint_path(cfg, source: Source) -> str:
    return f"{cfg.path(cfg.storage.checkpoint_dir).rstrip('/')}/ingest/{source.stream_id}"


def _stream(spark: "SparkSession", source: Source, layout: Layout, max_files: int, schema=None) -> "DataFrame":
    from pyspark.sql import functions as F

    reader = spark.readStream.option("maxFilesPerTrigger", max_files)
    if layout.format == "parquet":
        schema = schema or parquet_schema(spark, source.files)
        df = reader.schema(schema).parquet(source.pattern)
        return df.select(*[F.col(f"`{c}`") for c in schema.names],
                         F.col("_metadata.file_path").alias("source_file"))
    df = reader.format("text").load(source.pattern)
    return df.select("value", F.col("_metadata.file_path").alias("source_file"))


def source_conf(ingest: IngestConf, args: argparse.Namespace) -> SourceConf:
    """The configured source with the command-line flags laid over it, checked as far as it can
    be without reading a file (so a bad flag fails before Spark starts)."""
    src = ingest.source
    over: dict[str, Any] = {}
    if getattr(args, "source", None):
        over["path"] = args.source
    for key in ("format", "adapter", "ts_unit", "file_glob", "encoding"):
        v = getattr(args, key, None)
        if v:
            over[key] = v
    if getattr(args, "delimiter", None) is not None:
        over["csv_delimiter"] = args.delimiter
    if getattr(args, "csv_header", None) is not None:
        over["csv_header"] = args.csv_header
    if getattr(args, "null_values", None) is not None:
        over["null_values"] = tuple(v.strip() for v in args.null_values.split(",") if v.strip())
    cols = dict(src.columns)
    for item in getattr(args, "column", None) or []:
        if "=" not in item:
            raise ConfigError(f"--column expects FIELD=SOURCE_COLUMN (e.g. user_id=visitorid), got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        cols[k] = v
    over["columns"] = cols
    out = dataclasses.replace(src, **over)
    parse_delimiter(out.csv_delimiter)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Read raw behaviour logs (CSV, JSON lines, Parquet) into bronze_events; rows that break the "
        "raw event contract go to quarantine_events with a reason; one accounting row per batch goes "
        "to ops_ingest_log. Incremental: a rerun reads only files it has not seen; a run with other reading "
        "settings reads them again (see --reread)."
    )
    p.add_argument("--source", metavar="PATH", help="folder or file of raw logs (ingest.source.path)")
    p.add_argument("--format", choices=FORMATS, help="csv | json (JSON lines) | parquet (ingest.source.format)")
    p.add_argument("--adapter", choices=ADAPTERS,
                   help="known layout: movielens (ratings.csv), movielens_100k (u.data), recbole_inter "
                        "(.inter), taobao (user,item,category,behavior,ts) or generic (use --column)")
    p.add_argument("--column", action="append", default=[], metavar="FIELD=SOURCE",
                   help="map a contract field (" + ", ".join(CONTRACT_FIELDS) + ") to a source column, "
                        "e.g. --column user_id=visitorid, or to a Spark SQL expression over the source "
                        "columns, e.g. --column \"ts=expr:concat_ws(' ', day, time)\" (repeatable)")
    p.add_argument("--ts-unit", dest="ts_unit", choices=TS_UNITS,
                   help="timestamp unit: auto (epoch seconds below 1e11, ms below 1e14, us below 1e17, else ns; "
                        "text is ISO-8601), s, ms, us, ns, iso")
    p.add_argument("--encoding", choices=tuple(ENCODINGS),
                   help="text encoding of CSV / JSON files (ingest.source.encoding, default utf-8); a line not "
                        "valid in it is quarantined as 'invalid <encoding>'")
    p.add_argument("--glob", dest="file_glob", metavar="PATTERN",
                   help="files to read inside the source folder (ingest.source.file_glob, default *)")
    p.add_argument("--delimiter", metavar="SEP",
                   help="CSV field delimiter, one or more characters: ',' ';' '|' '::' ' ' or '\\t' for a tab "
                        "(ingest.source.csv_delimiter; generic adapter)")
    p.add_argument("--header", dest="csv_header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether CSV files start with a header line (ingest.source.csv_header, default yes); "
                        "with --no-header columns are _c0, _c1, ... by position, e.g. --column user_id=_c0")
    p.add_argument("--null-values", dest="null_values", metavar="A,B,...",
                   help="comma-separated field texts read as missing (ingest.source.null_values, default "
                        "NA,N/A,null,NULL,\\N,None,nan); empty and whitespace-only fields always are; "
                        "'' for none but those")
    p.add_argument("--reread", choices=REREAD_MODES, default="refuse",
                   help="when other reading settings (another checkpoint) read again a file that bronze_events "
                        "already holds rows of and give some of them new event ids: refuse (default; the batch "
                        "fails before writing, naming the files) or replace (that file's bronze rows become "
                        "exactly this reading's, in the same commit as the insert). Rows that only now parse "
                        "(quarantined before) land either way")
    p.add_argument("--dry-run", action="store_true",
                   help="write nothing: print the resolved mapping, the first rows as they would land and the "
                        "count per quarantine reason on a sample of the source")
    p.add_argument("--sample", type=int, default=10000, metavar="N",
                   help="--dry-run: lines (or Parquet rows) read from the source (default 10000)")


def check_layout(spark: "SparkSession", layout: Layout, parquet_schema=None) -> None:
    """Plan the transforms on an empty batch (text lines, or rows of ``parquet_schema``), so that
    a mapping Spark cannot resolve (a typo in an ``expr:`` mapping) fails here with the mapping
    named, not inside the stream."""
    from pyspark.errors import AnalysisException
    from pyspark.sql.types import StringType, StructField, StructType

    if parquet_schema is None:
        batch = spark.createDataFrame([], "value string, source_file string")
    else:
        batch = spark.createDataFrame([], StructType([*parquet_schema.fields, StructField("source_file", StringType())]))
    try:
        prepare(batch, layout, 0.0, 1.0)
    except AnalysisException as e:
        if not layout.expressions:
            raise
        shown = ", ".join(f"{f}=expr:{x}" for f, x in layout.expressions.items())
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--column {shown}: Spark cannot use it ({first}); expressions read source "
                          f"columns by name (known here: {', '.join(layout.columns) or 'use fields[...]'})") from None


def _read_sample(spark: "SparkSession", source: Source, layout: Layout, n: int, schema=None) -> "DataFrame":
    """The first ``n`` lines (or rows) of the source, read as the stream reads them."""
    from pyspark.sql import functions as F

    if layout.format == "parquet":
        df = spark.read.schema(schema).parquet(*source.files)
        df = df.select(*[F.col(f"`{c}`") for c in schema.names], F.col("_metadata.file_path").alias("source_file"))
    else:
        df = spark.read.format("text").load(source.files)
        df = df.select("value", F.col("_metadata.file_path").alias("source_file"))
    return df.limit(n)


def dry_run(spark: "SparkSession", cfg, src: SourceConf, sample: int) -> dict:
    """``ingest --dry-run``: what a run would do with the source, on its first ``sample`` lines,
    writing nothing (no table, no checkpoint): the resolved mapping, the first rows as they would
    land in bronze_events, and the count per quarantine reason."""
    from pyspark.sql import functions as F

    source = discover(spark, src)
    out: dict[str, Any] = {"dry_run": True, "source": source.pattern, "files": len(source.files)}
    first = None if src.format == "parquet" or not source.files else _first_header(spark, source.files, src.encoding)
    if not source.files or (src.format != "parquet" and first is None):
        print(f"dry run: no file under {source.pattern} has a line yet; a run would ingest nothing")
        return {**out, "rows_sampled": 0}
    pq_schema = parquet_schema(spark, source.files) if src.format == "parquet" else None
    layout = resolve_layout(src, first, pq_schema.names if pq_schema is not None else None)
    check_layout(spark, layout, pq_schema)
    writer = _BatchWriter(None, source, layout, ts_bounds(cfg.ingest))
    rows = writer.prepare(_read_sample(spark, source, layout, sample, pq_schema)).cache()
    try:
        reasons = {r["reason"]: int(r["count"]) for r in rows.where(F.col("reason").isNotNull())
                   .groupBy("reason").count().orderBy(F.desc("count")).collect()}
        n = rows.count()
        shown = ["user_id", "item_id", "event_type", "ts", "value", "category", "source_session_id", "extra"]
        head = [r.asDict() for r in to_bronze(rows.where(F.col("reason").isNull()), "dry-run")
                .orderBy("source_file", "ts").select(*shown).limit(10).collect()]
    finally:
        rows.unpersist()
    print(f"dry run of {source.pattern}: {len(source.files)} file(s); format {layout.format}, adapter {layout.adapter}, "
          f"delimiter {layout.delimiter!r}, encoding {layout.encoding}, ts unit {layout.ts_unit}")
    print(f"columns: {', '.join(layout.columns) or '(per JSON line)'}")
    print("mapping: " + ", ".join(f"{k} <- {v}" for k, v in layout.mapping.items()))
    print(f"sample: {n} row(s); {n - sum(reasons.values())} would land in bronze_events, "
          f"{sum(reasons.values())} in quarantine_events")
    for reason, c in reasons.items():
        print(f"  quarantine {reason!r}: {c}")
    print("first rows as they would land:")
    for r in head:
        print("  " + " | ".join(f"{k}={r[k]}" for k in shown if r[k] not in (None, {})))
    print("nothing was written")
    return {**out, "rows_sampled": n, "would_land": n - sum(reasons.values()), "quarantine": reasons,
            "mapping": layout.mapping}


def run(ctx, args: argparse.Namespace) -> dict:
    from ebbtide import tables

    cfg = ctx.cfg
    src = source_conf(cfg.ingest, args)
    spark = ctx.spark
    if getattr(args, "dry_run", False):
        return dry_run(spark, cfg, src, getattr(args, "sample", 10000))
    tables.ensure_database(spark, cfg)
    source = discover(spark, src)
    summary: dict[str, Any] = {
        "source": source.pattern, "stream_id": source.stream_id, "batches": 0, "files": 0,
        "rows_read": 0, "bronze_new": 0, "quarantined": 0, "duplicates": 0, "bronze_replaced": 0,
        "batch_seconds": [],
    }
    first = None if src.format == "parquet" or not source.files else _first_header(spark, source.files, src.encoding)
    if not source.files:
        log.warning("no files match %s; nothing to ingest", source.pattern)
    elif src.format != "parquet" and first is None:
        # Left unread, so they are read once they have lines (the checkpoint would skip them).
        log.warning("the %d file(s) matching %s are all empty; nothing to ingest", len(source.files), source.pattern)
    else:
        pq_schema = parquet_schema(spark, source.files) if src.format == "parquet" else None
        layout = resolve_layout(src, first, pq_schema.names if pq_schema is not None else None)
        check_layout(spark, layout, pq_schema)
        log.info("ingesting %s (%d file(s) present; format %s, adapter %s, mapping %s)",
                 source.pattern, len(source.files), layout.format, layout.adapter, layout.mapping)
        writer = _BatchWriter(ctx, source, layout, ts_bounds(cfg.ingest), getattr(args, "reread", None) or "refuse")
        ckpt = checkpoint_path(cfg, source)
        with step(log, f"ingest stream (checkpoint {ckpt})"), _jit_sized_codegen(spark):
            query = (
                _stream(spark, source, layout, cfg.ingest.max_files_per_trigger, pq_schema)
                .writeStream.queryName(f"ingest_{source.stream_id}")
                .trigger(availableNow=True)
                .option("checkpointLocation", ckpt)
                .foreachBatch(writer)
                .start()
            )
            try:
                query.awaitTermination()
            except Exception:
                if writer.refused is not None:  # our own one-line refusal, not the stream's wrapping of it
                    raise writer.refused from None
                raise
        for b in writer.batches:
            summary["batches"] += 1
            summary["files"] += len(b["files"])
            summary["rows_read"] += b["rows_read"]
            summary["bronze_new"] += b["rows_bronze_new"]
            summary["quarantined"] += b["rows_quarantined"]
            summary["duplicates"] += b["rows_duplicate"]
            summary["bronze_replaced"] += b["rows_bronze_replaced"]
            summary["batch_seconds"].append(b["seconds"])
        if not writer.batches:
            log.info("no new files since the last run; nothing to ingest")

    # Downstream stages and SQL users find all three tables even after a run with no rows.
    for spec in (BRONZE_SPEC, QUARANTINE_SPEC, OPS_LOG_SPEC):
        _ensure_table(spark, cfg, spec)
    log.info("ingest done: %d rows read -> %d new bronze rows, %d quarantined, %d duplicates",
             summary["rows_read"], summary["bronze_new"], summary["quarantined"], summary["duplicates"])
    return summary
