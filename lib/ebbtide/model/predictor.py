"""A trained EbbtideNet with its vocabularies: what scoring, evaluation and the MLflow pyfunc load.

A predictor folder holds everything needed to score, and nothing from the training process:
``predictor.json`` (model config, catalogue sizes, window length, session gap, lineage),
``weights.pt`` (the state dict), ``item_vocab.parquet`` (item_id, item_index, category) and
``event_type_vocab.parquet`` (event_type, event_type_index), and ``neighbours.npz`` when training
chose the item-neighbour term (``ebbtide.model.neighbours``). The pyfunc logs that folder as an
artifact, so ``Predictor.load("models:/ebbtide@challenger")`` works in any fresh process that can
reach the MLflow registry.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from ebbtide.mlflow_uris import MlflowUris

# The pyfunc takes a DataFrame and validates it through its logged signature, not through type hints.
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")

try:  # the pyfunc class must subclass PythonModel; scoring on a bare torch host works without mlflow
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object

META_FILE = "predictor.json"
WEIGHTS_FILE = "weights.pt"
ITEM_VOCAB_FILE = "item_vocab.parquet"
EVENT_VOCAB_FILE = "event_type_vocab.parquet"
FORMAT_VERSION = 1
DEFAULT_EVENT_TYPE = "interaction"
def save(
    folder: str,
    state_dict: dict,
    model_conf: dict,
    n_items: int,
    n_event_types: int,
    max_len: int,
    item_vocab,
    event_type_vocab,
    session_gap_s: float,
    lineage: Optional[dict] = None,
) -> str:
    """Write a predictor folder (see the module doc). item_vocab / event_type_vocab: pandas frames."""
    import torch

    os.makedirs(folder, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, os.path.join(folder, WEIGHTS_FILE))
    iv = item_vocab[["item_id", "item_index"] + (["category"] if "category" in item_vocab.columns else [])].copy()
    iv.to_parquet(os.path.join(folder, ITEM_VOCAB_FILE), index=False)
    event_type_vocab[["event_type", "event_type_index"]].to_parquet(os.path.join(folder, EVENT_VOCAB_FILE), index=False)
    meta = {
        "format": FORMAT_VERSION,
        "model": model_conf,
        "n_items": int(n_items),
        "n_event_types": int(n_event_types),
        "max_len": int(max_len),
        "session_gap_s": float(session_gap_s),
        "lineage": lineage or {},
    }
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, default=str)
    return folder


def set_meta(folder: str, key: str, value: Any) -> None:
    """Record what is fitted after the network (the churn calibration, ebbtide.model.calibration; the
    popularity prior, ebbtide.model.prior) under ``key`` in a saved predictor's predictor.json."""
    path = os.path.join(_find_predictor_dir(folder), META_FILE)
    with open(path) as f:
        meta = json.load(f)
    meta[key] = value
    with open(path, "w") as f:
        json.dump(meta, f, indent=2, default=str)


def read_meta(model_uri_or_dir: str, uris: "Optional[MlflowUris]" = None) -> dict:
    """A predictor's predictor.json alone (the scoring driver reads the popularity prior it chose)."""
    if os.path.isdir(model_uri_or_dir):
        with open(os.path.join(_find_predictor_dir(model_uri_or_dir), META_FILE)) as f:
            return json.load(f)
    import tempfile

    from ebbtide.mlflow_uris import download_model

    with tempfile.TemporaryDirectory(prefix="ebbtide-meta-") as tmp:
        return read_meta(download_model(model_uri_or_dir, uris, dst=tmp))


def _find_predictor_dir(root: str) -> str:
    if os.path.exists(os.path.join(root, META_FILE)):
        return root
    for dirpath, _dirs, files in os.walk(root):
        if META_FILE in files:
            return dirpath
    raise FileNotFoundError(f"no {META_FILE} under {root}: not an ebbtide model (log one with `ebbtide train`)")


# Model switches added after models were first registered, with the value that reproduces the
# older networks, so that a champion registered before them still loads.
ADDED_LATER = {"last_item_skip": False, "transitions": "none", "time_gates": False, "user_decay": False, "use_time": True,
               "time_inputs": "all"}


class Predictor:
    """Scores users with a trained EbbtideNet. Batches are dicts of numpy arrays with the model's FEATURES."""

    def __init__(self, net, meta: dict, item_vocab, event_type_vocab, device: str = "cpu"):
        import pandas as pd

        self.net = net.eval()
        self.meta = meta
        self.device = device
        self.n_items = int(meta["n_items"])
        self.max_len = int(meta["max_len"])
        self.session_gap_s = float(meta.get("session_gap_s", 1800.0))
        iv = item_vocab.sort_values("item_index")
        self._item_id = np.full(self.n_items, "", dtype=object)
        self._item_id[0], self._item_id[1] = "<pad>", "<oov>"
        self._item_id[iv["item_index"].to_numpy()] = iv["item_id"].astype(str).to_numpy()
        self._item_index = dict(zip(iv["item_id"].astype(str), iv["item_index"].astype(int)))
        cats = iv["category"].fillna("").astype(str) if "category" in iv.columns else pd.Series([""] * len(iv))
        self.categories = sorted(set(cats))
        cat_pos = {c: i for i, c in enumerate(self.categories)}
        self._item_category = np.zeros(self.n_items, dtype=np.int64)
        self._item_category[iv["item_index"].to_numpy()] = [cat_pos[c] for c in cats]
        self._event_index = dict(zip(event_type_vocab["event_type"].astype(str), event_type_vocab["event_type_index"].astype(int)))
        # The encoder outputs of the last batch's chunks (see `_encoded`).
        self._encoded_memo: dict[tuple, tuple] = {}
        # The item similarity of the neighbour term (ebbtide.model.neighbours), set by `load`.
        self.neighbours = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, model_uri_or_dir: str, uris: "Optional[MlflowUris]" = None, device: str = "cpu") -> "Predictor":
        """From a predictor folder, a downloaded pyfunc folder, or a models:/ / runs:/ URI.

        URIs resolve through the tracking store and registry in `uris`, else this process's
        MLflow settings (MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI).
        """
        import pandas as pd
        import torch

        from ebbtide.model.config import ModelConf
        from ebbtide.model.network import EbbtideNet

        if os.path.isdir(model_uri_or_dir):
            root = model_uri_or_dir
        else:
            from ebbtide.mlflow_uris import download_model

            root = download_model(model_uri_or_dir, uris)
        folder = _find_predictor_dir(root)
        with open(os.path.join(folder, META_FILE)) as f:
            meta = json.load(f)
        if meta.get("format", 0) > FORMAT_VERSION:
            raise ValueError(f"{folder} was written by a newer ebbtide (format {meta['format']}); upgrade ebbtide")
        known = {f.name for f in dataclasses.fields(ModelConf)}
        # A key missing from an older folder means the network it was trained with lacked that part.
        saved = {**ADDED_LATER, **meta["model"]}
        mcfg = ModelConf(**{k: v for k, v in saved.items() if k in known})
        net = EbbtideNet(mcfg, meta["n_items"], meta["n_event_types"])
        state = torch.load(os.path.join(folder, WEIGHTS_FILE), map_location=device, weights_only=True)
        net.load_state_dict(state)
        net.to(device)
        item_vocab = pd.read_parquet(os.path.join(folder, ITEM_VOCAB_FILE))
        event_vocab = pd.read_parquet(os.path.join(folder, EVENT_VOCAB_FILE))
        out = cls(net, meta, item_vocab, event_vocab, device=device)
        from ebbtide.model import neighbours

        out.neighbours = neighbours.load(folder)
        return out

    # ------------------------------------------------------------------ vocabularies

    def item_ids(self, idx) -> np.ndarray:
        """Item indices -> item_id strings ('<pad>' / '<oov>' for 0 / 1)."""
        return self._item_id[np.asarray(idx, dtype=np.int64)]

    def item_index(self, item_ids: Sequence[str]) -> np.ndarray:
        return np.array([self._item_index.get(str(i), 1) for i in item_ids], dtype=np.int64)

    def event_type_index(self, event_types: Sequence[str]) -> np.ndarray:
        return np.array([self._event_index.get(str(e), 1) for e in event_types], dtype=np.int64)

    def item_category(self) -> np.ndarray:
        """Category position (into `self.categories`) of each item index."""
        return self._item_category

    # ------------------------------------------------------------------ scoring

    def _torch_batch(self, batch_np: dict, rows: slice):
        import torch

        from ebbtide.model.network import FEATURES

        return {k: torch.as_tensor(np.asarray(batch_np[k])[rows]).to(self.device) for k in FEATURES}

    def _chunks(self, n: int, size: int = 1024):
        for i in range(0, n, size):
            yield slice(i, min(n, i + size))

    # Rows of one batch whose encoder outputs are kept (about 13 MB per 512 rows at L 50, hidden 128).
    ENCODED_MEMO_ROWS = 4096

    def _encoded(self, batch_np: dict, rows: slice):
        """(torch batch, encoder outputs) of ``rows``, computed once for the same arrays: the nightly
        scorer asks one batch of windows for scores, explanations, churn and interest at two times,
        and the encoder's pass is most of each (EbbtideNet.encoder_outputs). Keyed by the identity of
        the feature arrays, which the memo holds on to, so a key cannot be reused by new arrays;
        only the latest batch is kept, and only its first ENCODED_MEMO_ROWS rows."""
        from ebbtide.model.network import FEATURES

        arrays = tuple(batch_np[k] for k in FEATURES)
        ids = tuple(id(a) for a in arrays)
        key = (ids, rows.start, rows.stop)
        hit = self._encoded_memo.get(key)
        if hit is not None:
            return hit[0], hit[1]
        tb = self._torch_batch(batch_np, rows)
        enc = self.net.encoder_outputs(tb)
        if any(k[0] != ids for k in self._encoded_memo):
            self._encoded_memo.clear()
        if rows.stop <= self.ENCODED_MEMO_ROWS:
            self._encoded_memo[key] = (tb, enc, arrays)
        return tb, enc

    def prior_term(self, log_p: Optional[np.ndarray], view: str = "nightly") -> Optional[np.ndarray]:
        """(n_items,) what the ranking read as ``view`` (``ebbtide.model.prior.VIEWS``: the nightly
        table's, or a request-time caller's) adds to the logits for the catalogue's recent popularity
        ``log_p`` (log p_recent), with the weight chosen for that view at training; None when no
        prior was chosen or none is given."""
        from ebbtide.model import prior

        t = prior.term(self.meta, log_p, view)
        if t is None:
            return None
        out = np.zeros(self.n_items, dtype=np.float32)  # an older vocabulary's model: extra items dropped
        out[: min(len(t), self.n_items)] = t[: self.n_items]
        return out

    def neighbour_term(self, batch_np: dict, elapsed_s: np.ndarray, view: str = "nightly") -> Optional[np.ndarray]:
        """(n, n_items) what the ranking read as ``view`` adds for the window's item neighbours
        (``ebbtide.model.neighbours``), or None when training chose no such term for ``view``."""
        from ebbtide.model import neighbours

        return neighbours.term(self.neighbours, self.meta, batch_np, elapsed_s, self.n_items, view)

    def score_all(self, batch_np: dict, elapsed_s: np.ndarray, log_p: Optional[np.ndarray] = None,
                  view: str = "nightly") -> np.ndarray:
        """Scores (n, n_items) over the catalogue as of elapsed_s seconds after each user's last event.
        The ranking passes ``log_p`` (the catalogue's recent popularity at ``view``'s half-life,
        ``prior_term``) and gets the item-neighbour term chosen for ``view`` (``neighbour_term``);
        the interest read-outs call the network alone: they are the user's alone."""
        import torch

        n = len(np.asarray(batch_np["length"]))
        out = np.empty((n, self.n_items), dtype=np.float32)
        e = np.broadcast_to(np.asarray(elapsed_s, dtype=np.float32), (n,))
        with torch.no_grad():
            for s in self._chunks(n):
                tb, enc = self._encoded(batch_np, s)
                out[s] = self.net.item_scores(tb, torch.as_tensor(e[s]).to(self.device), enc=enc).cpu().numpy()
        term = self.prior_term(log_p, view)
        if term is not None:
            out += term[None, :]
        nb = self.neighbour_term(batch_np, e, view)
        if nb is not None:
            out += nb
        return out

    def recommend(self, batch_np: dict, elapsed_s: np.ndarray, k: int, exclude: Optional[list] = None,
                  log_p: Optional[np.ndarray] = None, view: str = "nightly"):
        """Top-k (item_index (n, k), scores (n, k)); `exclude[i]` lists item indices not to rank for row i;
        ``log_p`` and ``view`` as for ``score_all``."""
        import torch

        n = len(np.asarray(batch_np["length"]))
        k = int(min(k, self.n_items - 2))
        idx_out = np.empty((n, k), dtype=np.int64)
        sc_out = np.empty((n, k), dtype=np.float32)
        e = np.broadcast_to(np.asarray(elapsed_s, dtype=np.float32), (n,))
        term = self.prior_term(log_p, view)
        term_t = torch.as_tensor(term).to(self.device) if term is not None else None
        with torch.no_grad():
            for s in self._chunks(n):
                scores = self.net.item_scores(self._torch_batch(batch_np, s), torch.as_tensor(e[s]).to(self.device)).float()
                if term_t is not None:
                    scores = scores + term_t[None, :]
                nb = self.neighbour_term({key: np.asarray(v)[s] for key, v in batch_np.items()}, e[s], view)
                if nb is not None:
                    scores = scores + torch.as_tensor(nb).to(self.device)
                if exclude is not None:
                    for j, row in enumerate(range(s.start, s.stop)):
                        ex = np.asarray(exclude[row], dtype=np.int64)
                        if ex.size:
                            scores[j, torch.as_tensor(ex[(ex >= 0) & (ex < self.n_items)])] = float("-inf")
                top = torch.topk(scores, k, dim=1)
                idx_out[s] = top.indices.cpu().numpy()
                sc_out[s] = top.values.cpu().numpy()
        return idx_out, sc_out

    def churn(self, batch_np: dict, elapsed_s: np.ndarray) -> dict[str, np.ndarray]:
        """p_return_7d, p_return_30d, p_return_ever, expected_days_to_return, half_life_days (of the return
        hazard) and readout_half_life_days (of the decayed read-out) per row, as of elapsed_s."""
        import torch

        keys = ("p_return_7d", "p_return_30d", "p_return_ever", "expected_days_to_return", "half_life_days",
                "readout_half_life_days")
        n = len(np.asarray(batch_np["length"]))
        out = {k: np.empty(n, dtype=np.float64) for k in keys}
        e = np.broadcast_to(np.asarray(elapsed_s, dtype=np.float32), (n,))
        with torch.no_grad():
            for s in self._chunks(n):
                tb, enc = self._encoded(batch_np, s)
                r = self.net.return_time_at(tb, torch.as_tensor(e[s]).to(self.device), enc=enc)
                for k in keys:
                    if k in r:
                        out[k][s] = r[k].double().cpu().numpy()
        from ebbtide.model import calibration

        # Models trained before the calibration (or with train.churn_calibration off) have none.
        return calibration.apply(self.meta.get("churn_calibration"), out, batch_np, e)

    def category_interest(self, batch_np: dict, elapsed_s: np.ndarray) -> np.ndarray:
        """Decayed interest (n, len(self.categories)) per category, as of elapsed_s."""
        import torch

        n = len(np.asarray(batch_np["length"]))
        out = np.zeros((n, len(self.categories)), dtype=np.float32)
        e = np.broadcast_to(np.asarray(elapsed_s, dtype=np.float32), (n,))
        cat = torch.as_tensor(self._item_category)
        with torch.no_grad():
            for s in self._chunks(n):
                tb, enc = self._encoded(batch_np, s)
                r = self.net.category_interest(tb, cat, torch.as_tensor(e[s]).to(self.device), enc=enc)
                out[s, : r.shape[1]] = r.cpu().numpy()
        return out

    def explain(self, batch_np: dict, elapsed_s: np.ndarray, item_idx: np.ndarray, top: int = 3) -> dict[str, np.ndarray]:
        """Why each of K items (item_idx (n, K)) ranks for its user as of elapsed_s: up to `top` events
        of the user's window per item, most weight first (`EbbtideNet.explain` says how the weight is
        computed). batch_np also needs `last_ts` (n,) in epoch seconds, as `features_from_events` gives.

        Returns (n, K, top) arrays: `position` (the event's slot in the window, -1 where fewer events
        count), `item_id` (object, None at -1), `ts_us` (the event's epoch microseconds, -1 at -1;
        windows keep no event times, so it is last_ts minus the gaps after the event,
        `sequences.seconds_before_last`) and `weight` (0 at -1).
        """
        import torch

        from ebbtide.sequences import seconds_before_last

        n = len(np.asarray(batch_np["length"]))
        idx = np.asarray(item_idx, dtype=np.int64).reshape(n, -1)
        pos = np.full((n, idx.shape[1], int(top)), -1, dtype=np.int64)
        weight = np.zeros(pos.shape, dtype=np.float64)
        e = np.broadcast_to(np.asarray(elapsed_s, dtype=np.float32), (n,))
        with torch.no_grad():
            for s in self._chunks(n):
                tb, enc = self._encoded(batch_np, s)
                p, w = self.net.explain(tb, torch.as_tensor(e[s]).to(self.device),
                                        torch.as_tensor(idx[s]).to(self.device), int(top), enc=enc)
                pos[s], weight[s] = p.cpu().numpy(), w.double().cpu().numpy()
        found = pos >= 0
        rows = np.arange(n)[:, None, None]
        at = np.where(found, pos, 0)
        item_idx_at = np.asarray(batch_np["item_idx"], dtype=np.int64)[rows, at]
        last_us = np.round(np.asarray(batch_np["last_ts"], dtype=np.float64) * 1e6).astype(np.int64)
        before_us = np.round(seconds_before_last(batch_np["gap_s"]) * 1e6).astype(np.int64)[rows, at]
        return {
            "position": pos,
            "item_id": np.where(found, self.item_ids(item_idx_at), None),
            "ts_us": np.where(found, last_us[:, None, None] - before_us, -1),
            "weight": np.where(found, weight, 0.0),
        }

    # ------------------------------------------------------------------ raw events -> features

    def features_from_events(
        self,
        item_ids: Sequence[Sequence[str]],
        timestamps: Sequence[Sequence[float]],
        event_types: Optional[Sequence[Optional[Sequence[str]]]] = None,
    ) -> dict[str, np.ndarray]:
        """Users' raw recent events (oldest first or not; sorted here by time) -> a left-padded batch.

        Same features as gold_user_sequences: the last max_len events, gap since the previous event
        (0 for the first), hour of week (UTC), session start where the gap exceeds the session gap.
        """
        from ebbtide.sequences import window_arrays

        n = len(item_ids)
        ts_all, items_all, ets_all, starts_all, ends = [], [], [], [], []
        offset = 0
        for i in range(n):
            ts = np.asarray(timestamps[i], dtype=np.float64)
            items = [str(x) for x in item_ids[i]]
            ets = event_types[i] if event_types is not None and event_types[i] is not None else [DEFAULT_EVENT_TYPE] * len(items)
            if not (len(ts) == len(items) == len(ets)):
                raise ValueError(f"row {i}: item_ids, timestamps and event_types must have the same length")
            if len(ts) == 0:
                raise ValueError(f"row {i}: a user needs at least one event to be scored")
            order = np.argsort(ts, kind="stable")  # equal times keep their input order
            ts = ts[order]
            gaps = np.diff(ts, prepend=ts[0])
            sess = (gaps > self.session_gap_s).astype(np.int32)
            sess[0] = 1
            ts_all.append(np.round(ts * 1e6).astype(np.int64))
            items_all.append(self.item_index([items[j] for j in order]))
            ets_all.append(self.event_type_index([str(ets[j]) for j in order]))
            starts_all.append(sess)
            offset += len(ts)
            ends.append(offset)
        ends_a = np.asarray(ends, dtype=np.int64)
        firsts = np.concatenate([[0], ends_a[:-1]]) if n else np.zeros(0, np.int64)
        # The sequences stage's own window kernel: scoring features equal training features.
        w = window_arrays(
            ends_a, firsts, self.max_len,
            np.concatenate(ts_all) if n else np.zeros(0, np.int64),
            np.concatenate(items_all) if n else np.zeros(0, np.int64),
            np.concatenate(ets_all) if n else np.zeros(0, np.int64),
            np.concatenate(starts_all) if n else np.zeros(0, np.int32),
        )
        out = {k: w[k] for k in ("item_idx", "event_type_idx", "gap_s", "hour_of_week", "session_start", "length")}
        out["last_ts"] = w["last_ts_us"].astype(np.float64) / 1e6
        return out

    # ------------------------------------------------------------------ the pyfunc's frame API

    def predict_frame(self, df, k: int = 10):
        """DataFrame (user_id, item_ids, timestamps, event_types, as_of) -> top-k items with scores and churn figures."""
        import pandas as pd

        missing = {"item_ids", "timestamps", "as_of"} - set(df.columns)
        if missing:
            raise ValueError(f"input lacks columns {sorted(missing)}; expected user_id, item_ids, timestamps, event_types, as_of")
        ets = list(df["event_types"]) if "event_types" in df.columns else None
        feats = self.features_from_events(list(df["item_ids"]), list(df["timestamps"]), ets)
        as_of = np.asarray(df["as_of"], dtype=np.float64)
        elapsed = np.maximum(as_of - feats["last_ts"], 0.0)
        idx, scores = self.recommend(feats, elapsed, k)
        churn = self.churn(feats, elapsed)
        return pd.DataFrame(
            {
                "user_id": df["user_id"].astype(str).to_numpy() if "user_id" in df.columns else np.arange(len(df)).astype(str),
                "item_ids": [list(self.item_ids(r)) for r in idx],
                "scores": [list(map(float, r)) for r in scores],
                "days_since_last_event": elapsed / 86400.0,
                "p_return_7d": churn["p_return_7d"],
                "p_return_30d": churn["p_return_30d"],
                "expected_days_to_return": churn["expected_days_to_return"],
                "half_life_days": churn["half_life_days"],
            }
        )

    def input_example(self):
        """Two users' recent events and an as-of time, for the pyfunc's signature and docs."""
        import pandas as pd

        ids = [i for i in self._item_id[2 : min(self.n_items, 8)]]
        events = sorted(self._event_index, key=self._event_index.get)[:1] or [DEFAULT_EVENT_TYPE]
        t0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
        return pd.DataFrame(
            {
                "user_id": ["u1", "u2"],
                "item_ids": [ids[:3], ids[-2:]],
                "timestamps": [[t0, t0 + 600.0, t0 + 4000.0], [t0, t0 + 86400.0]],
                "event_types": [[events[0]] * 3, [events[0]] * 2],
                "as_of": [t0 + 7200.0, t0 + 30 * 86400.0],
            }
        )


class EbbtidePyfunc(_PythonModel):
    """MLflow pyfunc: predict(DataFrame of users' recent events + as_of, params={'k': 10}) -> DataFrame."""

    def load_context(self, context) -> None:
        self.predictor = Predictor.load(context.artifacts["predictor"])

    def predict(self, context, model_input, params: Optional[dict[str, Any]] = None):
        k = int((params or {}).get("k", 10))
        return self.predictor.predict_frame(model_input, k=k)
