"""What runs inside the Python workers: the per-worker model cache and batched inference
over Arrow record batches (the functions given to ``DataFrame.mapInArrow``).

The model is loaded once per worker process (Spark reuses Python workers across tasks, so
once per executor core) and kept in a module-level cache keyed by its URI. Each Arrow batch
is cut into calls of ``batch_users`` rows so that one call's score matrix
(users x catalogue) stays within ``max_batch_mfloats``.

Scorers are duck-typed: anything with ``n_items``, ``scores(batch) -> (n, n_items)``,
``item_ids(idx)``, and for churn ``churn(batch)`` and ``item_category`` works. ``PredictorScorer``
adapts the trained model; ``EmbeddingScorer`` (a dot product against an item matrix) is what
the benchmark measures, through the same plumbing.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from ebbtide import catalog
from ebbtide.mlflow_uris import MlflowUris

# The sequence features a scorer reads, as in gold_training_examples / gold_user_sequences.
FEATURES = ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length")
_FEATURE_DTYPES = {
    "item_idx": np.int64,
    "event_type_idx": np.int64,
    "gap_s": np.float32,
    "hour_of_week": np.int64,
    "session_start": np.int64,
    "length": np.int64,
}

# (uri, stores, identity) -> loaded scorer; lives as long as the Python worker, which Spark reuses
# for every later job of the session. `models:/ebbtide/1` names a different model in every
# registry (and in a registry made again at the same path), so the URI alone is no key: a worker
# that scored one store's version 1 served it for another store's version 1.
_MODELS: dict[tuple, Any] = {}
# (uri, stores, identity, allow, deny) -> boolean mask of catalogue indices that may never be recommended.
_BASE_MASKS: dict[tuple, np.ndarray] = {}

# What the workers return (mapInArrow), typed as the tables declare the columns (ebbtide.catalog):
# both tables' rows in one schema, from one pass over each batch, so that the encoder runs once per
# user for both. A recommendation row has a rank (and null churn columns); a user's churn / decay
# row has a null rank. Flat rows, not a list per user: the recommendation rows reach the table as
# the workers made them, with no explode in the JVM. The driver adds score_date, churn_risk and the
# lineage.
# item_index (the recommended item's index in the model) is no table column: the table keeps item_id.
_RECS, _CHURN = catalog.GOLD_RECOMMENDATIONS, catalog.GOLD_CHURN_DECAY
REC_COLUMNS = ("rank", "item_index", "item_id", "score", "because")
CHURN_WORKER_COLUMNS = ("user_id", "days_since_last_event", "p_return_7d", "p_return_30d", "expected_days_to_return",
                        "interest_half_life_days", "top_fading", "events_last_7d", "activity_ratio")
_SCORED_TYPES = {"user_id": _RECS.column("user_id").type, "item_index": "int",
                 **{n: _RECS.column(n).type for n in REC_COLUMNS if n != "item_index"},
                 **{n: _CHURN.column(n).type for n in CHURN_WORKER_COLUMNS[1:]}}
SCORED_COLUMNS = ("user_id", *REC_COLUMNS, *CHURN_WORKER_COLUMNS[1:])
SCORED_SCHEMA = pa.schema([pa.field(n, catalog.arrow_type(_SCORED_TYPES[n])) for n in SCORED_COLUMNS])
SCORED_DDL = ", ".join(f"{n} {catalog.type_ddl(_SCORED_TYPES[n])}" for n in SCORED_COLUMNS)
BECAUSE_TYPE = SCORED_SCHEMA.field("because").type
FADING_TYPE = SCORED_SCHEMA.field("top_fading").type
# Recent activity against the user's own pace: events in this many days before the score date.
RECENT_DAYS = 7


# --------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------


def fixed_list_to_numpy(col: pa.Array, dtype) -> np.ndarray:
    """A list<...> column whose rows all hold L values -> an (n, L) array (no Python loop)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), dtype=dtype)
    offsets = col.offsets.to_numpy()
    lengths = np.diff(offsets)
    width = int(lengths[0])
    if (lengths != width).any():
        raise ValueError(
            f"sequence column {col.type} is ragged (lengths {lengths.min()}..{lengths.max()}); "
            "windows must be left-padded to sequences.max_len"
        )
    values = col.flatten().to_numpy(zero_copy_only=False)
    return values.astype(dtype, copy=False).reshape(n, width)


def features_from_arrow(
    batch: pa.RecordBatch, n_items: Optional[int] = None, n_event_types: Optional[int] = None
) -> dict[str, np.ndarray]:
    """The model's input dict from an Arrow batch of windows. Items and event types the model
    has never seen (indices appended to the vocabularies after training) map to OOV (1)."""
    out: dict[str, np.ndarray] = {}
    for name in FEATURES:
        col = batch.column(batch.schema.get_field_index(name))
        if name == "length":
            out[name] = col.to_numpy(zero_copy_only=False).astype(np.int64)
        else:
            out[name] = fixed_list_to_numpy(col, _FEATURE_DTYPES[name])
    if n_items is not None:
        idx = out["item_idx"]
        idx[idx >= n_items] = 1
    if n_event_types is not None:
        et = out["event_type_idx"]
        et[et >= n_event_types] = 1
    return out


def elapsed_from_arrow(batch: pa.RecordBatch) -> np.ndarray:
    return batch.column(batch.schema.get_field_index("elapsed_s")).to_numpy(zero_copy_only=False).astype(np.float32)


def last_ts_from_arrow(batch: pa.RecordBatch) -> np.ndarray:
    """The `last_ts` timestamp column as epoch seconds (float64, as Predictor batches carry it)."""
    col = batch.column(batch.schema.get_field_index("last_ts"))
    return col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6


class PredictorScorer:
    """Adapts ``ebbtide.model.predictor.Predictor`` to the scorer interface."""

    def __init__(self, predictor: Any):
        self.predictor = predictor
        n = getattr(predictor, "n_items", None)
        self.n_items = int(n) if n is not None else self._probe_n_items()
        self.item_category = self._item_categories()
        meta = getattr(predictor, "meta", None)
        self.n_event_types = int(meta["n_event_types"]) if isinstance(meta, dict) and "n_event_types" in meta else None
        self._last_feats: Optional[tuple[pa.RecordBatch, dict[str, np.ndarray]]] = None

    def _probe_n_items(self) -> int:
        batch = {k: np.zeros((1, 1), dtype=_FEATURE_DTYPES[k]) for k in FEATURES if k != "length"}
        batch["item_idx"][0, 0] = 1
        batch["length"] = np.ones(1, dtype=np.int64)
        return int(self.predictor.score_all(batch, np.zeros(1, dtype=np.float32)).shape[1])

    def _item_categories(self) -> Optional[np.ndarray]:
        """Category name of each item index (None where unknown), or None without categories."""
        cats = getattr(self.predictor, "item_category", None)
        if cats is None:
            return None
        if callable(cats):  # Predictor: positions into predictor.categories
            names = np.asarray([c or None for c in self.predictor.categories], dtype=object)
            return names[np.asarray(cats(), dtype=np.int64)]
        return np.asarray(cats, dtype=object)

    def _feats(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """The batch's feature arrays, the same arrays for every question asked of the same batch, so
        that the predictor runs its encoder over them once (Predictor._encoded)."""
        if self._last_feats is None or self._last_feats[0] is not batch:
            self._last_feats = (batch, features_from_arrow(batch, self.n_items, self.n_event_types))
        return self._last_feats[1]

    def scores(self, batch: pa.RecordBatch, log_p: Optional[np.ndarray] = None) -> np.ndarray:
        """The ranking's scores; ``log_p``: the catalogue's recent popularity (ebbtide.model.prior)."""
        return self.scores_at(batch, elapsed_from_arrow(batch), log_p)

    def scores_at(self, batch: pa.RecordBatch, elapsed_s: np.ndarray, log_p: Optional[np.ndarray] = None) -> np.ndarray:
        if log_p is None:
            out = self.predictor.score_all(self._feats(batch), elapsed_s.astype(np.float32))
        else:
            out = self.predictor.score_all(self._feats(batch), elapsed_s.astype(np.float32), log_p=log_p)
        return np.array(out, dtype=np.float32, copy=False)

    def churn(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        return self.predictor.churn(self._feats(batch), elapsed_from_arrow(batch))

    def explain(self, batch: pa.RecordBatch, idx: np.ndarray, top: int) -> Optional[dict[str, np.ndarray]]:
        """Predictor.explain for the top-k items idx (n, k) (the batch needs `last_ts`); None when the
        model cannot explain itself."""
        explain = getattr(self.predictor, "explain", None)
        if not callable(explain):
            return None
        feats = {**self._feats(batch), "last_ts": last_ts_from_arrow(batch)}
        return explain(feats, elapsed_from_arrow(batch), idx, top)

    def interest(self, batch: pa.RecordBatch, by: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(names (G,), interest right after the last event (n, G), interest now (n, G)).

        By category with a model that reads out per-category decayed interest, that read-out;
        otherwise the model's next-item probability mass per category (or per item)."""
        elapsed = elapsed_from_arrow(batch)
        zero = np.zeros_like(elapsed)
        ci = getattr(self.predictor, "category_interest", None)
        if by == "category" and callable(ci) and hasattr(self.predictor, "categories"):
            feats = self._feats(batch)
            names = np.asarray([c or "(none)" for c in self.predictor.categories], dtype=object)
            return names, np.asarray(ci(feats, zero), np.float64), np.asarray(ci(feats, elapsed), np.float64)
        p_then = _softmax(self.scores_at(batch, zero))
        p_now = _softmax(self.scores_at(batch, elapsed))
        if by == "category" and self.item_category is not None:
            return group_mass(p_then, p_now, self.item_category)
        return self.item_ids(np.arange(self.n_items)), p_then, p_now

    def item_ids(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.predictor.item_ids(np.asarray(idx)), dtype=object)


class EmbeddingScorer:
    """Scores = user vector . item vector, over an item matrix saved with ``np.save``.
    Row 0 and 1 of the matrix are pad and OOV, as in the vocabulary."""

    def __init__(self, path: str):
        self.items = np.load(path).astype(np.float32)
        self.n_items = self.items.shape[0]
        self._items_t = None
        self._ids = np.array([f"i{i}" for i in range(self.n_items)], dtype=object)
        self.item_category = None

    def scores(self, batch: pa.RecordBatch) -> np.ndarray:
        import torch

        # Arrow buffers are read-only; torch wants a writable array (the copy is tiny next to the product).
        users = np.array(fixed_list_to_numpy(batch.column(batch.schema.get_field_index("user_vec")), np.float32))
        if self._items_t is None:
            self._items_t = torch.from_numpy(self.items).t().contiguous()
        return (torch.from_numpy(users) @ self._items_t).numpy()

    def item_ids(self, idx: np.ndarray) -> np.ndarray:
        return self._ids[idx]


def load_predictor(uri: str, uris: Optional[MlflowUris] = None) -> PredictorScorer:
    """Workers are fresh processes: the driver tells them where the tracking store and registry are."""
    from ebbtide.model.predictor import Predictor

    return PredictorScorer(Predictor.load(uri, uris or None))


def load_embeddings(uri: str, uris: Optional[MlflowUris] = None) -> EmbeddingScorer:
    return EmbeddingScorer(uri)


def cached_model(uri: str, loader: Callable[..., Any], uris: Optional[MlflowUris] = None, identity: str = "") -> Any:
    """The scorer of ``uri`` as ``uris`` resolve it, loaded once per worker. ``identity``: what tells
    this model apart from any other the same URI may name (the registered version's run and source,
    ``ModelRef.identity``)."""
    key = (uri, uris, identity)
    model = _MODELS.get(key)
    if model is None:
        model = loader(uri, uris)
        _MODELS[key] = model
    return model


# --------------------------------------------------------------------------------------
# Top-k with exclusions
# --------------------------------------------------------------------------------------


def base_mask(scorer: Any, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> np.ndarray:
    """True where an index may never be recommended: pad, OOV, denied, or outside the allow list."""
    n = scorer.n_items
    mask = np.zeros(n, dtype=bool)
    mask[: min(2, n)] = True
    if allow or deny:
        ids = scorer.item_ids(np.arange(n))
        if allow:
            mask |= ~np.isin(ids, np.asarray(list(allow), dtype=object))
        if deny:
            mask |= np.isin(ids, np.asarray(list(deny), dtype=object))
    return mask


def consumed_mask_rows(col: pa.Array, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs of a list<int> column of consumed item indices, for fancy indexing."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if len(col) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    col = col.fill_null(pa.scalar([], type=col.type)) if col.null_count else col
    offsets = col.offsets.to_numpy()
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(len(col)), np.diff(offsets))
    keep = (values >= 0) & (values < n_items)
    return rows[keep], values[keep]


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, best first. Masked entries carry -inf and are returned as such."""
    import torch

    k = min(k, scores.shape[1])
    vals, idx = torch.topk(torch.from_numpy(scores), k, dim=1, largest=True, sorted=True)
    return idx.numpy(), vals.numpy()


def _sub_batches(batch: pa.RecordBatch, n_items: int, batch_users: int, max_mfloats: float):
    rows = max(1, min(batch_users, int(max_mfloats * 1e6 // max(n_items, 1))))
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def _set_threads(torch_threads: int) -> None:
    if torch_threads > 0:
        import torch

        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def score_fn(
    uri: str,
    *,
    k: int,
    churn: bool = True,
    loader: Callable[..., Any] = load_predictor,
    uris: Optional[MlflowUris] = None,
    identity: str = "",
    exclude_consumed: bool = True,
    allow: Sequence[str] = (),
    deny: Sequence[str] = (),
    because_top: int = 3,
    top_fading: int = 5,
    fading_by: str = "category",
    batch_users: int = 512,
    max_batch_mfloats: float = 32.0,
    torch_threads: int = 0,
    log_p: Optional[np.ndarray] = None,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function of the nightly scoring: windows (+ consumed, last_ts) in,
    ``SCORED_SCHEMA`` rows out: one per (user, rank) of the user's top-k, each with up to
    ``because_top`` events of the user that weighed most for the item (scorers without ``explain``,
    or ``because_top`` 0: empty lists), and with ``churn`` one churn / decay row per user (rank null).
    Every question of a batch is asked of the same feature arrays, so the encoder runs once per
    user for both tables (``PredictorScorer._feats``, ``Predictor._encoded``). ``log_p``: the
    catalogue's recent popularity as of the score date, which the recommendations blend in with the
    model's own weight (ebbtide.model.prior); None ranks with the network alone."""
    allow, deny = tuple(allow), tuple(deny)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _set_threads(torch_threads)
        scorer = cached_model(uri, loader, uris, identity)
        key = (uri, uris, identity, allow, deny)
        never = _BASE_MASKS.get(key)
        if never is None:
            never = _BASE_MASKS[key] = base_mask(scorer, allow, deny)
        never_idx = np.flatnonzero(never)
        for big in batches:
            for batch in _sub_batches(big, scorer.n_items, batch_users, max_batch_mfloats):
                if batch.num_rows == 0:
                    continue
                yield _recommend(batch, scorer, never_idx, k, exclude_consumed, because_top, log_p)
                if churn:
                    yield _churn_rows(batch, scorer, top_fading, fading_by)

    return run


def _scored_batch(user_id: pa.Array, columns: dict[str, pa.Array]) -> pa.RecordBatch:
    """A ``SCORED_SCHEMA`` batch from some of its columns; the others null."""
    n = len(user_id)
    return pa.RecordBatch.from_arrays(
        [user_id, *[columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in list(SCORED_SCHEMA)[1:]]],
        schema=SCORED_SCHEMA,
    )


def _recommend(batch: pa.RecordBatch, scorer: Any, never_idx: np.ndarray, k: int, exclude_consumed: bool,
               because_top: int, log_p: Optional[np.ndarray] = None) -> pa.RecordBatch:
    """Each user's top-k of the items that may be recommended, best first, one row per (user, rank)
    (masked items fall out, so a user can have fewer than k rows, or none)."""
    scores = scorer.scores(batch) if log_p is None else scorer.scores(batch, log_p)
    scores[:, never_idx] = -np.inf
    if exclude_consumed and "consumed" in batch.schema.names:
        r, c = consumed_mask_rows(batch.column(batch.schema.get_field_index("consumed")), scorer.n_items)
        scores[r, c] = -np.inf
    idx, vals = topk(scores, k)
    explain = getattr(scorer, "explain", None)
    because = explain(batch, idx, because_top) if because_top > 0 and callable(explain) else None
    n, k = idx.shape
    valid = np.isfinite(vals)
    keep = valid.ravel()
    rows = np.repeat(np.arange(n), k)[keep]
    flat_idx = idx.ravel()[keep]
    return _scored_batch(batch.column(batch.schema.get_field_index("user_id")).take(pa.array(rows)), {
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)[keep], pa.int32()),
        "item_index": pa.array(flat_idx.astype(np.int32), pa.int32()),
        "item_id": pa.array(scorer.item_ids(flat_idx), pa.string()),
        "score": pa.array(vals.ravel()[keep].astype(np.float64), pa.float64()),
        "because": because_array(because, valid),
    })


def because_array(because: Optional[dict[str, np.ndarray]], valid: np.ndarray) -> pa.Array:
    """The `because` lists of the published (user, rank) rows (``valid`` (n, k)), built from the
    flat (n, k, top) arrays of ``Predictor.explain`` without a Python loop per row: the found
    entries of a row are a prefix of its `top` slots (most weight first), so a row's list is its
    found entries in order. No explanation: every list is empty (never null, so the gate's null
    checks keep holding)."""
    keep = valid.ravel()
    if because is None:
        return pa.ListArray.from_arrays(np.zeros(int(keep.sum()) + 1, dtype=np.int32),
                                        pa.array([], BECAUSE_TYPE.value_type))
    top = because["position"].shape[-1]

    def kept(name: str) -> np.ndarray:
        return because[name].reshape(-1, top)[keep]

    found = kept("position") >= 0
    offsets = np.concatenate([[0], np.cumsum(found.sum(1))]).astype(np.int32)
    entries = pa.StructArray.from_arrays(
        [
            pa.array(kept("item_id")[found], pa.string()),
            pa.array(kept("ts_us")[found].astype(np.int64), pa.int64()).cast(BECAUSE_TYPE.value_type.field("ts").type),
            pa.array(kept("weight")[found].astype(np.float64), pa.float64()),
        ],
        fields=list(BECAUSE_TYPE.value_type),
    )
    return pa.ListArray.from_arrays(offsets, entries)


# --------------------------------------------------------------------------------------
# Churn and interest decay
# --------------------------------------------------------------------------------------


def _softmax(scores: np.ndarray) -> np.ndarray:
    m = np.max(np.where(np.isfinite(scores), scores, -np.inf), axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(np.where(np.isfinite(scores), scores - m, -np.inf))
    s = e.sum(axis=1, keepdims=True)
    return e / np.where(s > 0, s, 1.0)


def group_mass(p_then: np.ndarray, p_now: np.ndarray, group: np.ndarray):
    """Sum per-item probabilities into groups (pad / OOV / unknown items fall out)."""
    g = np.array([x if isinstance(x, str) and x else "" for x in group[: p_then.shape[1]]], dtype=object)
    names, codes = np.unique(g.astype(str), return_inverse=True)
    onehot = np.zeros((len(codes), len(names)), dtype=np.float64)
    onehot[np.arange(len(codes)), codes] = 1.0
    keep = names != ""
    return names[keep].astype(object), (p_then @ onehot)[:, keep], (p_now @ onehot)[:, keep]


def fading_interest(
    names: np.ndarray, then: np.ndarray, now: np.ndarray, top: int
) -> list[list[tuple[str, float, float]]]:
    """Per user, up to ``top`` groups (categories or items) that lost the most interest between
    the last event and now, largest loss first: [(name, interest_now, interest_then), ...]."""
    loss = then - now
    k = min(top, loss.shape[1])
    if k == 0:
        return [[] for _ in range(loss.shape[0])]
    part = np.argpartition(-loss, k - 1, axis=1)[:, :k]
    out: list[list[tuple[str, float, float]]] = []
    for r in range(loss.shape[0]):
        cand = part[r][np.argsort(-loss[r, part[r]], kind="stable")]
        out.append([(str(names[c]), float(now[r, c]), float(then[r, c])) for c in cand if loss[r, c] > 0])
    return out


def _churn_rows(batch: pa.RecordBatch, scorer: Any, top_fading: int, fading_by: str) -> pa.RecordBatch:
    """The churn / decay row of each of the batch's users (rank null)."""
    ch = scorer.churn(batch)
    fading: list[list] = [[] for _ in range(batch.num_rows)]
    if top_fading > 0:
        names, then, now = scorer.interest(batch, fading_by)
        fading = fading_interest(names, then, now, top_fading)
    events_recent, activity_ratio = recent_activity(batch)

    def col(name: str) -> pa.Array:
        return pa.array(np.asarray(ch[name], dtype=np.float64).reshape(-1), pa.float64())

    fading_arr = pa.array(
        [
            [{"item_or_category": n, "decayed_interest": now, "interest_at_last_event": then} for n, now, then in row]
            for row in fading
        ],
        type=FADING_TYPE,
    )
    elapsed = batch.column(batch.schema.get_field_index("elapsed_s")).to_numpy(zero_copy_only=False)
    return _scored_batch(batch.column(batch.schema.get_field_index("user_id")), {
        "days_since_last_event": pa.array(elapsed.astype(np.float64) / 86400.0, pa.float64()),
        "p_return_7d": col("p_return_7d"),
        "p_return_30d": col("p_return_30d"),
        "expected_days_to_return": col("expected_days_to_return"),
        "interest_half_life_days": col("half_life_days"),
        "top_fading": fading_arr,
        "events_last_7d": pa.array(events_recent, pa.int32()),
        "activity_ratio": pa.array(activity_ratio.astype(np.float64), pa.float64()),
    })


def recent_activity(batch: pa.RecordBatch, days: int = RECENT_DAYS) -> tuple[np.ndarray, np.ndarray]:
    """Per user, from the window the model reads: (events in the ``days`` days before the score
    date, that count over the user's own pace), the pace being the window's events per ``days``
    days from its first event to the score date (at least ``days`` long, so a user whose whole
    window falls in the period reads 1, not a burst). 0 = silent lately, below 1 = slowing down,
    above 1 = more active than usual."""
    from ebbtide.sequences import seconds_before_last

    def column(name: str, dtype) -> np.ndarray:
        return batch.column(batch.schema.get_field_index(name)).to_numpy(zero_copy_only=False).astype(dtype)

    gap = fixed_list_to_numpy(batch.column(batch.schema.get_field_index("gap_s")), np.float64)
    length = np.maximum(column("length", np.int64), 1)  # every scored user has an event
    elapsed = column("elapsed_s", np.float64)
    n, width = gap.shape
    age_days = (seconds_before_last(gap) + elapsed[:, None]) / 86400.0
    real = np.arange(width)[None, :] >= (width - length)[:, None]
    recent = (real & (age_days <= days)).sum(1)
    span_days = age_days[np.arange(n), width - length] if width else np.zeros(n)
    pace = length / np.maximum(span_days / days, 1.0)
    return recent.astype(np.int32), recent / pace
