"""Every table ebbtide publishes, specified once: columns (name, type, nullable, comment), keys,
partitioning, physical layout, table comment and properties.

The jobs, the DDL and the docs derive from these specs instead of repeating them:

- the jobs take their table comments, column comments, MERGE keys and partition columns from here
  (:meth:`TableSpec.with_comments` puts the column comments into a DataFrame's schema, so a table's
  first commit already carries them);
- ``deploy/sql/01_score_tables.sql`` holds :func:`create_table_sql` of the scoring tables, and
  ``docs/tables.md`` is :func:`render_markdown`; ``scripts/catalog_docs.py`` writes both and unit
  tests fail when either differs from what the specs render;
- :meth:`TableSpec.schema_ddl`, :meth:`TableSpec.spark_schema` and :meth:`TableSpec.arrow_schema`
  give the same columns as a Spark DDL string, a ``StructType`` or a ``pyarrow.Schema``.

Types are written as Spark SQL types (``string``, ``int``, ``bigint``, ``array<int>``,
``array<struct<item_id: string, ts: timestamp>>``...). ``nullable`` says whether rows may hold a
null there; every table is still created with all columns nullable (``ebbtide.tables``), so a
job's literal never becomes a NOT NULL constraint. Nothing here imports Spark or pyarrow until a
schema is asked for: the training feed imports this module on machines without Spark.

A table's schema, keys and partitioning are what the jobs produce: a spark test per job compares
the table it writes with its spec (tests/spark/spec_check.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame
    from pyspark.sql.types import DataType, StructType


# --------------------------------------------------------------------------------------
# Spark SQL types: parsed once, rendered for Spark, Arrow, DDL and the docs
# --------------------------------------------------------------------------------------

# Spark's own name of each simple type (its simpleString), by every name Spark's DDL accepts.
_SIMPLE = {
    "string": "string", "int": "int", "integer": "int", "bigint": "bigint", "long": "bigint",
    "smallint": "smallint", "short": "smallint", "tinyint": "tinyint", "byte": "tinyint",
    "double": "double", "float": "float", "real": "float", "boolean": "boolean", "date": "date",
    "timestamp": "timestamp", "binary": "binary",
}
_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|<|>|,|:)")

# A parsed type: ("string",), ("array", T), ("map", K, V), ("struct", ((name, T), ...)).
ParsedType = tuple


def parse_type(text: str) -> ParsedType:
    """A Spark SQL type (``array<struct<a: string, b int>>``) -> a nested tuple (see ParsedType)."""
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot read type {text!r} at {text[pos:]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    out, i = _parse(tokens, 0, text)
    if i != len(tokens):
        raise ValueError(f"cannot read type {text!r}: unexpected {' '.join(tokens[i:])!r}")
    return out


def _expect(tokens: list[str], i: int, tok: str, text: str) -> int:
    if i >= len(tokens) or tokens[i] != tok:
        raise ValueError(f"cannot read type {text!r}: expected {tok!r}")
    return i + 1


def _parse(tokens: list[str], i: int, text: str) -> tuple[ParsedType, int]:
    if i >= len(tokens):
        raise ValueError(f"cannot read type {text!r}: it ends early")
    name = tokens[i].lower()
    if name == "array":
        elem, i = _parse(tokens, _expect(tokens, i + 1, "<", text), text)
        return ("array", elem), _expect(tokens, i, ">", text)
    if name == "map":
        key, i = _parse(tokens, _expect(tokens, i + 1, "<", text), text)
        value, i = _parse(tokens, _expect(tokens, i, ",", text), text)
        return ("map", key, value), _expect(tokens, i, ">", text)
    if name == "struct":
        i = _expect(tokens, i + 1, "<", text)
        fields = []
        while True:
            fname = tokens[i]
            i += 1
            if i < len(tokens) and tokens[i] == ":":
                i += 1
            ftype, i = _parse(tokens, i, text)
            fields.append((fname, ftype))
            if i < len(tokens) and tokens[i] == ",":
                i += 1
                continue
            return ("struct", tuple(fields)), _expect(tokens, i, ">", text)
    if name not in _SIMPLE:
        raise ValueError(f"cannot read type {text!r}: unknown type {tokens[i]!r}")
    return (_SIMPLE[name],), i + 1


def simple_string(t: Union[str, ParsedType]) -> str:
    """Spark's ``DataType.simpleString()`` of a type: ``array<struct<a:string,b:int>>``."""
    t = parse_type(t) if isinstance(t, str) else t
    if t[0] == "array":
        return f"array<{simple_string(t[1])}>"
    if t[0] == "map":
        return f"map<{simple_string(t[1])},{simple_string(t[2])}>"
    if t[0] == "struct":
        return "struct<" + ",".join(f"{n}:{simple_string(ft)}" for n, ft in t[1]) + ">"
    return t[0]


def type_ddl(t: Union[str, ParsedType], upper: bool = False) -> str:
    """A type as DDL writes it: ``array<struct<a: string, b: int>>`` (``ARRAY<STRUCT<a: STRING...``
    with ``upper``; field names keep their case)."""
    t = parse_type(t) if isinstance(t, str) else t

    def kw(s: str) -> str:
        return s.upper() if upper else s

    if t[0] == "array":
        return f"{kw('array')}<{type_ddl(t[1], upper)}>"
    if t[0] == "map":
        return f"{kw('map')}<{type_ddl(t[1], upper)}, {type_ddl(t[2], upper)}>"
    if t[0] == "struct":
        return kw("struct") + "<" + ", ".join(f"{n}: {type_ddl(ft, upper)}" for n, ft in t[1]) + ">"
    return kw(t[0])


def spark_type(t: Union[str, ParsedType]) -> "DataType":
    """The ``pyspark.sql.types`` type (no Spark session needed)."""
    from pyspark.sql import types as T

    t = parse_type(t) if isinstance(t, str) else t
    if t[0] == "array":
        return T.ArrayType(spark_type(t[1]))
    if t[0] == "map":
        return T.MapType(spark_type(t[1]), spark_type(t[2]))
    if t[0] == "struct":
        return T.StructType([T.StructField(n, spark_type(ft)) for n, ft in t[1]])
    return {
        "string": T.StringType(), "int": T.IntegerType(), "bigint": T.LongType(), "smallint": T.ShortType(),
        "tinyint": T.ByteType(), "double": T.DoubleType(), "float": T.FloatType(), "boolean": T.BooleanType(),
        "date": T.DateType(), "timestamp": T.TimestampType(), "binary": T.BinaryType(),
    }[t[0]]


def arrow_type(t: Union[str, ParsedType], tz: str = "UTC") -> "pa.DataType":
    """The pyarrow type Spark exchanges for it (``mapInArrow``, Parquet read back by pyarrow):
    timestamps in microseconds in ``tz`` (the session's time zone: UTC), dates as date32."""
    import pyarrow as pa

    t = parse_type(t) if isinstance(t, str) else t
    if t[0] == "array":
        return pa.list_(arrow_type(t[1], tz))
    if t[0] == "map":
        return pa.map_(arrow_type(t[1], tz), arrow_type(t[2], tz))
    if t[0] == "struct":
        return pa.struct([(n, arrow_type(ft, tz)) for n, ft in t[1]])
    return {
        "string": pa.string(), "int": pa.int32(), "bigint": pa.int64(), "smallint": pa.int16(), "tinyint": pa.int8(),
        "double": pa.float64(), "float": pa.float32(), "boolean": pa.bool_(), "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz=tz), "binary": pa.binary(),
    }[t[0]]


def element_type(t: Union[str, ParsedType]) -> str:
    """The innermost type of arrays (``array<array<float>>`` -> ``float``); the type itself otherwise."""
    t = parse_type(t) if isinstance(t, str) else t
    while t[0] == "array":
        t = t[1]
    return simple_string(t)


# --------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column: Spark SQL type, whether rows may hold null, the comment the table carries, and
    ``doc``, the longer text docs/tables.md shows where the comment says less (default: the comment)."""

    name: str
    type: str
    comment: str
    nullable: bool = True
    doc: str = ""

    def __post_init__(self):
        parse_type(self.type)  # a typo in a spec fails at import, not in a job

    @property
    def meaning(self) -> str:
        return self.doc or self.comment


STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"


@dataclass(frozen=True)
class TableSpec:
    """A published table. ``keys``: the columns that identify a row, which are the MERGE keys where
    the job MERGEs; ``partition_by``: Delta partition columns; ``layout``: how rows lie in the files;
    ``writes``: how the job writes it; ``properties``: table properties the job sets, with what they
    hold; ``stats_columns``: the only columns Delta keeps per-file min/max statistics for
    (``delta.dataSkippingStatsColumns``), for a table whose readers filter on those alone; empty =
    Delta's default (the first 32 columns). Statistics are computed for every row written, so on a
    wide table each unused column costs every write and spares no read."""

    name: str
    comment: str
    columns: tuple[Column, ...]
    written_by: str
    writes: str
    keys: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    layout: str = ""
    properties: tuple[tuple[str, str], ...] = ()
    stats_columns: tuple[str, ...] = ()
    _by_name: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        names = [c.name for c in self.columns]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"{self.name}: columns named twice: {sorted(dup)}")
        unknown = [k for k in (*self.keys, *self.partition_by, *self.stats_columns) if k not in names]
        if unknown:
            raise ValueError(f"{self.name}: keys, partition or statistics columns that are not columns: {unknown}")
        self._by_name.update({c.name: c for c in self.columns})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def table_properties(self) -> dict[str, str]:
        """The Delta table properties the table is created with (beyond its comment)."""
        return {STATS_COLUMNS_PROPERTY: ",".join(self.stats_columns)} if self.stats_columns else {}

    def column(self, name: str) -> Column:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.name} has no column {name!r}") from None

    def _pick(self, columns: Optional[Iterable[str]]) -> list[Column]:
        return list(self.columns) if columns is None else [self.column(c) for c in columns]

    @property
    def comments(self) -> dict[str, str]:
        """Column name -> comment."""
        return {c.name: c.comment for c in self.columns}

    def schema_ddl(self, columns: Optional[Iterable[str]] = None) -> str:
        """``a string, b array<int>, ...``: a schema for ``createDataFrame`` or ``mapInArrow``."""
        return ", ".join(f"{c.name} {type_ddl(c.type)}" for c in self._pick(columns))

    def spark_schema(self, columns: Optional[Iterable[str]] = None, comments: bool = True) -> "StructType":
        """The columns as a ``StructType``, with their comments in the field metadata (as Spark keeps
        a column comment) unless ``comments=False``; every field nullable, as the tables are."""
        from pyspark.sql import types as T

        return T.StructType([
            T.StructField(c.name, spark_type(c.type), True, {"comment": c.comment} if comments else None)
            for c in self._pick(columns)
        ])

    def arrow_schema(self, columns: Optional[Iterable[str]] = None, tz: str = "UTC") -> "pa.Schema":
        import pyarrow as pa

        return pa.schema([pa.field(c.name, arrow_type(c.type, tz)) for c in self._pick(columns)])

    def with_comments(self, df: "DataFrame") -> "DataFrame":
        """``df`` with the spec's column comments in its schema, so that the write that creates (or
        overwrites) the table commits them with its first version; columns the spec does not name
        are left as they are. The rows and the plan's work are unchanged (a projection of aliases)."""
        from pyspark.sql import functions as F

        return df.select(*[F.col(f"`{c}`").alias(c, metadata={"comment": self._by_name[c].comment})
                           if c in self._by_name else F.col(f"`{c}`") for c in df.columns])


def _cols(*columns: Column) -> tuple[Column, ...]:
    return tuple(columns)


def _same(col: Column, **changes: Any) -> Column:
    return Column(**{**col.__dict__, **changes})


# --------------------------------------------------------------------------------------
# ingest: bronze_events, quarantine_events, ops_ingest_log
# --------------------------------------------------------------------------------------

_INGEST_RUN = Column("ingest_run_id", "string", "id of the ingest run that wrote the row")

_BRONZE_COLUMNS = _cols(
    Column("event_id", "string", "the source's own event id, else sha2-256 of the whole source row: the same row read "
           "again gets the same id, rows that differ in any column stay distinct", nullable=False,
           doc="source's id, else sha2-256 of the whole source row: every source column (mapped or not) as "
               "`[[name, text], ...]` sorted by name, as JSON (a null and an empty text differ), the timestamp "
               "column as the instant it parses to. Rows that differ in any column stay distinct (a timestamp only "
               "by its instant, not its spelling); the same row read again (a replayed batch, a copied file) gets "
               "the same id"),
    Column("user_id", "string", "trimmed, never empty", nullable=False),
    Column("item_id", "string", "trimmed, never empty", nullable=False),
    Column("event_type", "string",
           "lower-cased; ingest.source.event_type_default (interaction) when the source has none",
           doc="lower-cased; default `interaction` (`ingest.source.event_type_default`)"),
    Column("ts", "timestamp", "event time, UTC", nullable=False),
    Column("event_date", "date", "to_date(ts), the partition", nullable=False, doc="`to_date(ts)`, the partition"),
    Column("value", "double", "rating, price, dwell seconds; null when absent"),
    Column("category", "string", "item category; null when absent", doc="null when absent"),
    Column("source_session_id", "string", "the source's own session id, when it has one"),
    Column("extra", "map<string,string>", "source columns the contract does not name (JSON objects as JSON text)"),
    Column("source_file", "string", "the file the row came from (a URI)"),
    _INGEST_RUN,
    Column("ingested_at", "timestamp", "UTC time the row was written"),
)

BRONZE_EVENTS = TableSpec(
    name="bronze_events",
    comment="Raw behaviour events that passed the raw event contract, deduplicated on event_id (ebbtide ingest)",
    columns=_BRONZE_COLUMNS,
    written_by="ebbtide ingest",
    writes="insert-only MERGE on event_id per micro-batch, confined to the days of the batch's events",
    keys=("event_id",),
    partition_by=("event_date",),
    layout="one folder per event_date",
)

QUARANTINE_EVENTS = TableSpec(
    name="quarantine_events",
    comment="Raw rows that broke the raw event contract: the text as read and the reason (ebbtide ingest)",
    columns=_cols(
        Column("quarantine_id", "string", "sha2-256 of source_file, raw and the line's occurrence number among "
               "identical lines of that file, so two identical bad lines stay two rows", nullable=False),
        Column("source_file", "string", "the file the line came from (a URI)"),
        Column("raw", "string", "the line as read (a Parquet row as JSON; bytes that are not text in "
               "ingest.source.encoding read as Latin-1, one character per byte)"),
        Column("reason", "string", "the first contract rule the row broke, e.g. missing user_id, unparsable ts",
               nullable=False, doc="the first contract rule the row broke (the list, in the order they are "
                                   "checked: docs/architecture.md, quarantine_events)"),
        _INGEST_RUN,
        Column("quarantined_at", "timestamp", "UTC time the row was written"),
    ),
    written_by="ebbtide ingest",
    writes="insert-only MERGE on quarantine_id per micro-batch",
    keys=("quarantine_id",),
)

_ROWS = "rows of the batch"
OPS_INGEST_LOG = TableSpec(
    name="ops_ingest_log",
    comment="One row per ingest micro-batch; rows_read = rows_bronze_new + rows_quarantined + rows_duplicate",
    columns=_cols(
        _INGEST_RUN,
        Column("stream_id", "string", "the source's checkpoint name", nullable=False),
        Column("source", "string", "the glob read"),
        Column("batch_id", "bigint", "the micro-batch number of the stream", nullable=False),
        Column("files", "array<string>", "the files the batch read"),
        Column("rows_read", "bigint", "rows the batch read (header and blank lines are not rows)"),
        Column("rows_bronze_new", "bigint", "rows inserted into bronze_events"),
        Column("rows_quarantined", "bigint", "rows written to quarantine_events"),
        Column("rows_duplicate", "bigint",
               "rows whose event_id bronze_events already held, or held twice in the batch"),
        Column("processed_at", "timestamp", "UTC time the row was written"),
    ),
    written_by="ebbtide ingest",
    writes="MERGE on (stream_id, batch_id) that updates a matched row: a replayed batch rewrites its own row",
    keys=("stream_id", "batch_id"),
)


# --------------------------------------------------------------------------------------
# sessionize: silver_events, silver_sessions, ops_sessionize_log
# --------------------------------------------------------------------------------------

_SESSIONIZED_AT = Column("processed_at", "timestamp",
                         "UTC time the sessionize run that last wrote the row started", nullable=False)

def _silver(c: Column) -> Column:
    """A bronze column as silver_events keeps it."""
    return _same(c, comment="to_date(ts), UTC", doc="") if c.name == "event_date" else c


SILVER_EVENTS = TableSpec(
    name="silver_events",
    comment=(
        "Bronze events with their session: session_id = user_id#session_index, event_seq = "
        "position in the user's history, gap_s = seconds since the user's previous event. "
        "Ordered by (ts, event_id); a new session starts when the gap exceeds sessionize.gap_minutes."
    ),
    columns=_cols(
        # bronze's columns, in bronze's order, less its raw lineage (extra, source_file)
        *(_silver(c) for c in _BRONZE_COLUMNS if c.name not in ("extra", "source_file")),
        Column("session_id", "string", "user_id#session_index", nullable=False, doc="`{user_id}#{session_index}`"),
        Column("session_index", "int", "0-based, per user, in time order", nullable=False),
        Column("event_seq", "int", "0-based position in the user's whole history, in (ts, event_id) order",
               nullable=False),
        Column("gap_s", "double", "seconds since the user's previous event; null for the first"),
        Column("is_session_start", "boolean", "true for the user's first event and after a gap longer than "
               "sessionize.gap_minutes", nullable=False),
        _SESSIONIZED_AT,
    ),
    written_by="ebbtide sessionize",
    writes="overwrite on a full run; otherwise an append (one commit, idempotent: txnAppId/txnVersion) of the new "
           "rows of users whose new events all come after their last row, and one MERGE on event_id that replaces "
           "the other affected users' rows (replace_scope on user_id)",
    keys=("event_id",),
    layout="not partitioned: a full run writes the rows range-partitioned on user_id, sorted by (user_id, ts) "
           "within each file, so each file holds a contiguous run of users (a warehouse written before this layout "
           "keeps event_date partitions until `ebbtide sessionize --full`)",
)

SILVER_SESSIONS = TableSpec(
    name="silver_sessions",
    comment="One row per user session (gap-based, see silver_events).",
    columns=_cols(
        Column("user_id", "string", "the session's user", nullable=False),
        Column("session_id", "string", "user_id#session_index, as in silver_events", nullable=False),
        Column("session_index", "int", "0-based, per user, in time order", nullable=False),
        Column("start_ts", "timestamp", "time of the session's first event", nullable=False),
        Column("end_ts", "timestamp", "time of the session's last event", nullable=False),
        Column("duration_s", "double", "end_ts - start_ts in seconds; 0 for a one-event session", nullable=False),
        Column("n_events", "int", "events in the session", nullable=False),
        Column("n_items", "int", "distinct items in the session", nullable=False),
        Column("event_types", "array<string>", "the session's distinct event types, sorted"),
        _SESSIONIZED_AT,
    ),
    written_by="ebbtide sessionize",
    writes="overwrite on a full run; otherwise one MERGE on session_id that updates or inserts the sessions that "
           "appended rows touched, and one that replaces the other affected users' rows (replace_scope on user_id)",
    keys=("session_id",),
    layout="not partitioned; summarized from silver_events range-partitioned on user_id",
)

OPS_SESSIONIZE_LOG = TableSpec(
    name="ops_sessionize_log",
    comment="One row per sessionize run that wrote; the newest row is the stage's state (the bronze_events "
            "version sessionized, the gap).",
    columns=_cols(
        Column("run_id", "string", "id of the sessionize run", nullable=False),
        Column("mode", "string", "full / incremental", nullable=False, doc="`full` / `incremental`"),
        Column("bronze_version", "bigint", "the bronze_events Delta version sessionized", nullable=False),
        Column("gap_minutes", "double", "the session gap used (sessionize.gap_minutes)", nullable=False),
        Column("affected_users", "bigint", "users appended to or re-sessionized (all on a full run)"),
        Column("events_written", "bigint", "silver_events rows inserted or updated"),
        Column("sessions_written", "bigint", "silver_sessions rows inserted or updated"),
        Column("processed_at", "timestamp", "UTC time the run started", nullable=False),
    ),
    written_by="ebbtide sessionize",
    writes="append, after both silver tables are written (a crash before it makes the next run redo the same users)",
)


# --------------------------------------------------------------------------------------
# sequences: vocabularies, gold_training_examples, gold_user_sequences
# --------------------------------------------------------------------------------------

GOLD_ITEM_VOCAB = TableSpec(
    name="gold_item_vocab",
    comment="Item vocabulary: stable item_index (0 pad, 1 OOV, real items from 2), append-only.",
    columns=_cols(
        Column("item_id", "string", "the item", nullable=False),
        Column("item_index", "int", "stable index from 2 (0 = pad, 1 = OOV, not stored); new items are numbered after "
               "the largest, in (first_seen, item_id) order, once they have sequences.min_item_count events",
               nullable=False),
        Column("category", "string", "category of the item's earliest event that has one, as of when it was added"),
        Column("first_seen", "timestamp", "time of the item's first event, as of when it was added"),
        Column("added_run_id", "string", "the sequences run that added the item"),
    ),
    written_by="ebbtide sequences",
    writes="insert-only MERGE on item_id (existing rows never change)",
    keys=("item_id",),
)

GOLD_EVENT_TYPE_VOCAB = TableSpec(
    name="gold_event_type_vocab",
    comment="Event-type vocabulary: stable event_type_index (0 pad, 1 OOV), append-only.",
    columns=_cols(
        Column("event_type", "string", "the event type", nullable=False),
        Column("event_type_index", "int", "stable index from 2 (0 = pad, 1 = OOV, not stored), in (first seen, "
               "event_type) order; every event type gets one", nullable=False),
    ),
    written_by="ebbtide sequences",
    writes="insert-only MERGE on event_type (existing rows never change)",
    keys=("event_type",),
)

# The window features, shared by gold_training_examples, gold_user_sequences and the model's feed.
_WINDOW = _cols(
    Column("item_idx", "array<int>", "input items (gold_item_vocab indices), oldest first, left-padded with 0 to "
           "sequences.max_len", nullable=False, doc="input items, oldest first, left-padded (L = sequences.max_len)"),
    Column("event_type_idx", "array<int>", "event types of the inputs (gold_event_type_vocab indices), left-padded",
           nullable=False, doc="event-type indices of the inputs (L)"),
    Column("gap_s", "array<float>",
           "seconds since the previous event in the window (0 for its first event and for pad)", nullable=False,
           doc="seconds since the previous event *in the window* (0 for the window's first event and for pad) (L)"),
    Column("hour_of_week", "array<int>", "UTC hour of the week of each input, Monday 00:00-00:59 = 0 ... Sunday 23h = "
           "167; 0 for pad", nullable=False, doc="UTC, Monday 00:00-00:59 = 0 ... Sunday 23h = 167; 0 for pad (L)"),
    Column("session_start", "array<int>", "1 where the input starts a session (silver_events.is_session_start), else 0",
           nullable=False, doc="1 where silver_events.is_session_start, else 0 (pad 0) (L)"),
    Column("length", "int", "number of real events in the window (1..sequences.max_len)", nullable=False,
           doc="number of real events in the window (1..L)"),
    Column("last_ts", "timestamp", "time of the window's last input event", nullable=False),
)

GOLD_TRAINING_EXAMPLES = TableSpec(
    name="gold_training_examples",
    comment="One row per (user, target event) plus censored rows; fixed-length left-padded windows; "
            "split by target ts against the cut-offs in the ebbtide.split.* table properties.",
    columns=_cols(
        Column("example_id", "string", "user_id#event_seq of the target (its position in the user's history); censored "
               "rows: user_id#censored-split", nullable=False,
               doc="`{user_id}#{event_seq of target}` (0-based position of the target in the user's history, = "
                   "silver_events.event_seq); censored rows: `{user_id}#censored-{split}`"),
        Column("user_id", "string", "the user", nullable=False),
        Column("split", "string", "train / valid / test: observed rows by target_ts against the cut-offs, censored "
               "rows by their cut-off", nullable=False,
               doc="`train` / `valid` / `test`: observed rows by target_ts (`< T1`, `< T2`, else test); censored rows "
                   "by their cut-off"),
        *_WINDOW,
        Column("target_item", "int", "item index of the target event (1 if OOV); 0 when censored", nullable=False),
        Column("target_event_type", "int", "event-type index of the target; 0 when censored", nullable=False),
        Column("target_ts", "timestamp", "time of the target event; null when censored"),
        Column("time_to_next_s", "float",
               "observed: target_ts - last_ts (the return time); censored: cut-off - last_ts", nullable=False),
        Column("censored", "int", "0 observed, 1 censored (the next event is not seen before the split's cut-off)",
               nullable=False),
        Column("run_id", "string", "the sequences run that built the row", nullable=False),
        Column("processed_at", "timestamp", "UTC time the row was written", nullable=False),
    ),
    written_by="ebbtide sequences",
    writes="rebuilt whole by every run but --nightly (the weekly workflow): overwrite with its split cut-offs in one "
           "REPLACE TABLE ... AS SELECT commit",
    keys=("example_id",),
    partition_by=("split",),
    layout="one folder per split; rows in feed order: spread over the files by a hash of example_id and ordered "
           "by another hash within each file, so every file is a random sample of users and times",
    properties=(
        ("ebbtide.split.valid_start", "T1, the first time of the valid split (ISO-8601, UTC)"),
        ("ebbtide.split.test_start", "T2, the first time of the test split (ISO-8601, UTC)"),
        ("ebbtide.split.end", "the last event time, the test split's censoring time (ISO-8601, UTC)"),
    ),
)

GOLD_USER_SEQUENCES = TableSpec(
    name="gold_user_sequences",
    comment="Latest window per user (last max_len events), same features as gold_training_examples.",
    columns=_cols(
        Column("user_id", "string", "the user", nullable=False),
        *_WINDOW,
        Column("n_events", "bigint", "the user's events so far", nullable=False),
        Column("n_sessions", "bigint", "the user's sessions so far (events with is_session_start)", nullable=False),
        Column("first_ts", "timestamp", "time of the user's first event", nullable=False),
        Column("processed_at", "timestamp", "UTC time the row was written", nullable=False),
    ),
    written_by="ebbtide sequences",
    writes="overwrite with its watermark in one commit (rebuild); with --nightly, a MERGE on user_id that rewrites the "
           "changed users' rows, then the watermark",
    keys=("user_id",),
    properties=(
        ("ebbtide.source.processed_at", "the watermark: the newest silver_events.processed_at its rows reflect"),
    ),
)


# --------------------------------------------------------------------------------------
# score: gold_recommendations, gold_churn_decay (deploy/sql/01_score_tables.sql)
# --------------------------------------------------------------------------------------

_SCORE_DATE = Column("score_date", "date", "the day scored: features use events before this date 00:00 UTC (partition)",
                     nullable=False)
_SCORED_USER = Column("user_id", "string", "user scored (active within score.lookback_days before score_date)",
                      nullable=False)
# Lineage; on both scoring tables. Columns added after a table's first release come after it.
_LINEAGE = _cols(
    Column("model_name", "string", "registered model name (or the model URI when scored from a bare URI)",
           nullable=False, doc="registered model name (the URI when scored from a bare `--model-uri`)"),
    Column("model_version", "int", "registered model version, null when scored from a bare URI",
           doc="registered version (null for a bare URI)"),
    Column("run_id", "string", "id of the scoring run that wrote the row", nullable=False, doc="the scoring run"),
    Column("scored_at", "timestamp", "UTC time the scoring run started", nullable=False,
           doc="when that run started (UTC)"),
)

GOLD_RECOMMENDATIONS = TableSpec(
    name="gold_recommendations",
    comment=(
        "Nightly top-K recommendations per active user, as of score_date 00:00 UTC (only events "
        "before it are used). One partition per score_date, a rerun replaces that date only."
    ),
    columns=_cols(
        _SCORE_DATE,
        _same(_SCORED_USER, doc="a user active within `score.lookback_days` before score_date"),
        Column("rank", "int", "1 = best, at most score.k per user", nullable=False,
               doc="1 = best, at most `score.k` per user"),
        Column("item_id", "string", "recommended item, items the user already consumed are excluded unless configured "
               "otherwise", nullable=False,
               doc="never an item the user consumed before score_date (unless `score.exclude_consumed: false`), never "
                   "a denied one, only allowed ones when an allow list is set"),
        Column("score", "double", "model score (logit) of the item for this user at the time elapsed since the last "
               "event, plus the model's popularity prior and item-neighbour term when it has them; comparable "
               "within a user and a model version only",
               doc="the model's score (logit) at the time elapsed since the user's last event, plus its popularity "
                   "prior (weight x log of the item's recent share of events) and its item-neighbour term (weight x "
                   "log of the item's affinity to the user's recent items) when training chose them; comparable "
                   "within a user and a model version only"),
        *_LINEAGE,
        Column("because", "array<struct<item_id: string, ts: timestamp, weight: double>>",
               "up to score.because_top past events of the user that weighed most for this item in the model, most "
               "weight first: item_id, ts (event time), weight (share of the event in the positive attribution over "
               "the window of the user, 0..1); empty when the model cannot explain itself, null on rows scored before "
               "the column existed",
               doc="up to `score.because_top` (3) past events of the user that weighed most for this item in the model "
                   "(`EbbtideNet.explain`), most weight first; weight = the event's share of the positive attribution "
                   "over the window (0..1); an item that no event attributes positively to (it ranks by the user "
                   "vector as a whole, its bias or the last item's skip / transition terms) lists the events the "
                   "read-out weighs most, weight = their share of the read-out weight; ts = last_ts minus the window's "
                   "gaps after the event (to the float32 precision of the gaps). Empty for a model that cannot explain "
                   "itself or a window without a known item, null on rows scored before the column existed"),
    ),
    written_by="ebbtide score",
    writes="replaceWhere score_date = D: one commit replaces the date's partition (columns added since the table's "
           "creation are added in the same commit)",
    keys=("score_date", "user_id", "rank"),
    partition_by=("score_date",),
    layout="one folder per score_date",
    # Readers pick a date (the partition) and users; statistics on item ids, scores and lineage
    # skip nothing and cost every nightly write.
    stats_columns=("user_id", "rank"),
)

GOLD_CHURN_DECAY = TableSpec(
    name="gold_churn_decay",
    comment=(
        "Nightly churn and interest-decay scores per active user, as of score_date 00:00 UTC. "
        "One partition per score_date, a rerun replaces that date only."
    ),
    columns=_cols(
        _same(_SCORE_DATE, doc="as in gold_recommendations (partition)"),
        _SCORED_USER,
        Column("days_since_last_event", "double", "days from the last event of the user to score_date 00:00 UTC",
               nullable=False, doc="(score_date 00:00 UTC - last_ts) in days"),
        Column("p_return_7d", "double",
               "probability of any event within 7 days after score_date, given none since the last event",
               doc="P(an event within 7 days after score_date | none since the last event), `Predictor.churn` at "
                   "that elapsed time"),
        Column("p_return_30d", "double",
               "probability of any event within 30 days after score_date, given none since the last event",
               doc="the same within 30 days"),
        Column("expected_days_to_return", "double",
               "expected days from score_date to the next event (see docs: Scoring)",
               doc="days from score_date to the next event given a return within the model's horizon (see "
                   "docs/architecture.md, Model)"),
        Column("interest_half_life_days", "double", "days for the urge of this user to come back to fall to half (the "
               "return-time hazard of the model)",
               doc="days for the user's urge to come back to halve: ln 2 / b of the return-time hazard "
                   "(`half_life_days`)"),
        Column("churn_risk", "string", "high / medium / low from p_return_30d and score.churn_high_below / "
               "churn_medium_below",
               doc="`high` when p_return_30d < `score.churn_high_below`, `medium` below `score.churn_medium_below`, "
                   "else `low`"),
        Column("top_fading", "array<struct<item_or_category: string, decayed_interest: double, "
               "interest_at_last_event: double>>",
               "categories (or items) whose predicted interest fell most since the last event: item_or_category, "
               "decayed_interest (share of next-item probability now), interest_at_last_event (the same share right "
               "after the last event)",
               doc="up to `score.top_fading` categories (items when `score.fading_by: item` or the model knows no "
                   "categories) that lost most interest since the last event, largest loss first: decayed_interest "
                   "= share of next-item probability now, interest_at_last_event = the same share right after the "
                   "last event"),
        *_LINEAGE,
        Column("events_last_7d", "int", "events of the user in the 7 days before score_date (among the last "
               "sequences.max_len)",
               doc="the user's events in the 7 days before score_date (among the window's last `sequences.max_len`)"),
        Column("activity_ratio", "double", "events_last_7d over the usual pace of the user (events per 7 days in the "
               "window, first event to score_date, at least 7 days): 0 silent lately, < 1 slowing down, 1 as usual, "
               "> 1 more active",
               doc="events_last_7d over the user's own pace: the window's events per 7 days from its first event to "
                   "score_date (a span of at least 7 days, so a window inside the week reads 1). 0 = silent lately, "
                   "< 1 slowing down, > 1 more active than usual"),
    ),
    written_by="ebbtide score",
    writes="replaceWhere score_date = D, after gold_recommendations (one commit each)",
    keys=("score_date", "user_id"),
    partition_by=("score_date",),
    layout="one folder per score_date",
    stats_columns=("user_id",),  # as gold_recommendations: readers pick a date and users
)


# --------------------------------------------------------------------------------------
# evaluate, monitor: ops_evaluations, ops_monitoring
# --------------------------------------------------------------------------------------

OPS_EVALUATIONS = TableSpec(
    name="ops_evaluations",
    comment="One row per (model or baseline, metric, k, split, protocol/view, examples version); "
            "k = rank cut-off, or the horizon in days for churn metrics",
    columns=_cols(
        Column("run_id", "string", "the evaluate run that wrote the row last", nullable=False),
        Column("evaluated_at", "timestamp", "UTC time of that run", nullable=False),
        Column("model_name", "string", "ebbtide (the challenger), champion, or a baseline name", nullable=False,
               doc="`ebbtide` (the challenger), `champion`, or a baseline name"),
        Column("model_role", "string", "challenger / champion / baseline", nullable=False,
               doc="`challenger` / `champion` / `baseline`"),
        Column("model_version", "string", "registry version ('' for baselines and unregistered URIs)", nullable=False),
        Column("model_uri", "string", "the model evaluated"),
        Column("examples_version", "bigint", "Delta version of gold_training_examples evaluated", nullable=False),
        Column("split", "string", "valid / test", nullable=False, doc="`valid` / `test`"),
        Column("protocol", "string", "protocol/view: temporal or leave-last-out, nightly or request_time",
               nullable=False,
               doc="`{protocol}/{view}`: protocol `temporal` / `leave-last-out`, view `nightly` (the headline; churn "
                   "rows too) / `request_time` (rows written before the views existed say `temporal` alone)"),
        Column("metric", "string", "hr, recall, ndcg, mrr, coverage, ...; churn_* and return_cindex for churn",
               nullable=False,
               doc="`hr`, `recall`, `ndcg`, `mrr`, `coverage`, `sampled_hr`, `sampled_ndcg` (request-time view only), "
                   "...; churn: `churn_roc_auc`, `churn_recent_roc_auc` (users active in the week before the cut), "
                   "`churn_pr_auc`, `churn_brier`, `churn_ece`, `churn_positive_rate`, `churn_n`, `return_cindex`"),
        Column("k", "int", "the rank cut-off; for churn_* the horizon in days; null for return_cindex",
               doc="the rank cut-off; for `churn_*` the horizon in days; null for `return_cindex`"),
        Column("value", "double", "null when undefined (e.g. one class only)"),
        Column("n_examples", "bigint", "the view's ranked rows (nightly: (user, day) rows), or users in the churn "
               "snapshot"),
        Column("mlflow_run_id", "string", "the MLflow evaluation run holding the same numbers and the report"),
    ),
    written_by="ebbtide evaluate",
    writes="MERGE on the keys that updates matched rows: evaluating the same model on the same table version again "
           "replaces its rows",
    keys=("model_name", "model_version", "examples_version", "split", "protocol", "metric", "k"),
)

OPS_MONITORING = TableSpec(
    name="ops_monitoring",
    comment=(
        "Daily monitoring: one row per (monitor_date, metric) with its value, thresholds and status "
        "(ok / warn / alert). Written by `ebbtide monitor --date D`; a rerun replaces D's rows."
    ),
    columns=_cols(
        Column("monitor_date", "date",
               "the UTC day monitored: events of that day, the tables of score date monitor_date", nullable=False),
        Column("metric", "string",
               "section.name, e.g. drift.gap_psi, outcomes.hit_rate@10, calibration.p_return_7d.brier", nullable=False,
               doc="`section.name`: `inputs.*`, `drift.*`, `outputs.*`, `outcomes.*`, `calibration.p_return_<h>d.*` "
                   "(docs/architecture.md, Monitoring)"),
        Column("value", "double", "the metric's value; null when there was nothing to measure"),
        Column("status", "string", "ok / warn / alert against warn_threshold / alert_threshold (ok when the metric has "
               "none)", nullable=False,
               doc="`ok` / `warn` / `alert` (`ok` for metrics without thresholds, and for a null value)"),
        Column("bound", "string", "lower (breach below the threshold), upper (above) or abs (|value| above); null: "
               "recorded only"),
        Column("warn_threshold", "double", "monitor.thresholds.<key>.warn when the row was written",
               doc="`monitor.thresholds.<key>.warn` at the time of the run (null: unchecked)"),
        Column("alert_threshold", "double", "monitor.thresholds.<key>.alert when the row was written",
               doc="`monitor.thresholds.<key>.alert` at the time of the run (null: unchecked)"),
        Column("subject", "string", "what was measured: table, score date and days"),
        Column("detail", "string", "JSON: bins, shares, counts behind the value",
               doc="JSON behind the value: bins and shares of a drift, counts of a share, a reliability bin's range, "
                   "count and mean prediction"),
        Column("run_id", "string", "id of the monitor run that wrote the row", nullable=False),
        Column("computed_at", "timestamp", "UTC time the monitor run started", nullable=False),
    ),
    written_by="ebbtide monitor",
    writes="one MERGE on (monitor_date, metric) that updates matched rows, inserts new ones and deletes the day's rows "
           "the run did not produce",
    keys=("monitor_date", "metric"),
)


# In the order of the pipeline: the order of docs/tables.md.
TABLES: dict[str, TableSpec] = {s.name: s for s in (
    BRONZE_EVENTS, QUARANTINE_EVENTS, OPS_INGEST_LOG,
    SILVER_EVENTS, SILVER_SESSIONS, OPS_SESSIONIZE_LOG,
    GOLD_ITEM_VOCAB, GOLD_EVENT_TYPE_VOCAB, GOLD_TRAINING_EXAMPLES, GOLD_USER_SEQUENCES,
    GOLD_RECOMMENDATIONS, GOLD_CHURN_DECAY,
    OPS_EVALUATIONS, OPS_MONITORING,
)}

# Tables that deploy/sql/01_score_tables.sql creates ahead of the job.
SCORE_TABLES = (GOLD_RECOMMENDATIONS.name, GOLD_CHURN_DECAY.name)


def spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no table spec named {name!r}; the catalog holds {', '.join(TABLES)}") from None


# --------------------------------------------------------------------------------------
# Derived text: DDL and docs
# --------------------------------------------------------------------------------------

# A type longer than this goes on its own line in the DDL, its comment on the next.
_DDL_TYPE_WIDTH = 16


def _sql_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_table_sql(s: TableSpec) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the table, in the current database: columns aligned, each
    with its comment; partitioning; table comment."""
    types = [type_ddl(c.type, upper=True) for c in s.columns]
    name_w = max(len(c.name) for c in s.columns) + 1
    type_w = max((len(t) for t in types if len(t) <= _DDL_TYPE_WIDTH), default=0) + 1
    lines = []
    for i, (c, t) in enumerate(zip(s.columns, types)):
        comma = "," if i < len(s.columns) - 1 else ""
        if len(t) <= _DDL_TYPE_WIDTH:
            lines.append(f"  {c.name.ljust(name_w)}{t.ljust(type_w)}COMMENT {_sql_str(c.comment)}{comma}")
        else:
            lines.append(f"  {c.name.ljust(name_w)}{t}")
            lines.append(f"{' ' * (2 + name_w + type_w)}COMMENT {_sql_str(c.comment)}{comma}")
    out = [f"CREATE TABLE IF NOT EXISTS {s.name} (", *lines, ")", "USING DELTA"]
    if s.partition_by:
        out.append(f"PARTITIONED BY ({', '.join(s.partition_by)})")
    out.append(f"COMMENT {_sql_str(s.comment)}")
    props = s.table_properties
    if props:
        out.append("TBLPROPERTIES (" + ", ".join(f"{_sql_str(k)} = {_sql_str(v)}" for k, v in props.items()) + ")")
    out[-1] += ";"
    return "\n".join(out) + "\n"


def create_tables_sql(names: Sequence[str] = SCORE_TABLES) -> str:
    """The CREATE TABLE statements of several tables, one blank line apart."""
    return "\n".join(create_table_sql(spec(n)) for n in names)


def _cell(text: str) -> str:
    """Text for a markdown table cell."""
    return text.replace("\n", " ").replace("|", "\\|")


DOCS_HEADER = """\
# ebbtide tables

Generated from `lib/ebbtide/catalog.py` by `scripts/catalog_docs.py` (`make catalog-docs`); do not
edit by hand: change the spec and run it again (a unit test fails while this file differs from the
specs). What each stage does with these tables, and why, is in [architecture.md](architecture.md#tables).

Every table is Delta, at `{warehouse}/{database}.db/{name}` and registered as `{database}.{name}`
(default database `ebbtide`). All columns are declared nullable; "null" below says whether rows may
actually hold a null. Timestamps are UTC. The comments below are the ones `DESCRIBE TABLE` shows,
except where the docs say more than the table's column comment.
"""


def render_markdown() -> str:
    """docs/tables.md: per table its comment, writer, keys, partitioning, layout, properties and
    columns (name, type, null, meaning)."""
    out = [DOCS_HEADER]
    out.append("| table | written by | keys | partitioned by |")
    out.append("|---|---|---|---|")
    for s in TABLES.values():
        keys = ", ".join(s.keys) or "none (append-only)"
        out.append(f"| [{s.name}](#{s.name}) | `{s.written_by}` | {keys} | {', '.join(s.partition_by) or '-'} |")
    for s in TABLES.values():
        out.append("")
        out.append(f"## {s.name}")
        out.append(_cell(s.comment))
        out.append("")
        out.append(f"- written by: `{s.written_by}`; {s.writes}")
        out.append(f"- keys: {', '.join(f'`{k}`' for k in s.keys) if s.keys else 'none (append-only)'}")
        out.append(f"- partitioned by: {', '.join(f'`{p}`' for p in s.partition_by) if s.partition_by else 'none'}")
        if s.layout:
            out.append(f"- layout: {s.layout}")
        if s.stats_columns:
            out.append(f"- file statistics (data skipping) on: {', '.join(f'`{c}`' for c in s.stats_columns)} only "
                       f"(`{STATS_COLUMNS_PROPERTY}`)")
        for k, v in s.properties:
            out.append(f"- table property `{k}`: {v}")
        out.append("")
        out.append("| column | type | null | meaning |")
        out.append("|---|---|---|---|")
        for c in s.columns:
            out.append(f"| {c.name} | `{type_ddl(c.type)}` | {'yes' if c.nullable else 'no'} | {_cell(c.meaning)} |")
    return "\n".join(out) + "\n"
