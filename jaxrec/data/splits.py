"""Train/validation/test splits of an :class:`InteractionLog`, leakage-free by construction.

Every split keeps the index space of its input (``num_users``, ``num_items``,
``item_features``), so one model's embeddings serve all parts.

* :func:`chronological`: global time-ordered ratio split (2TS paper 000, Sec. 5: 70/10/20).
* :func:`periods` / :func:`period_ranges`: consecutive periods ``D_0..D_T`` (SML paper 003,
  Sec. 2: retraining on ``D_t`` is judged on ``D_{t+1}``).
* :func:`leave_last_out`: per user, last -> test, second to last -> validation (TP paper 001).
* :func:`user_holdout`: existing vs new users (TP paper 001: 80/20).
* :func:`user_holdout_last`: TP's whole protocol: item then user filters, 80/20 existing/new users,
  each user's last item the test row, new users' earlier rows their input only.
* :func:`context_holdout`: disjoint validation/test users whose first half is context
  and second half ground truth (tree paper 004, Appendix "experimental settings").
* :func:`prequential`: time-ordered offline prefix then a stream of fixed-size
  mini-batches for validation and test (MeLON paper 002: 95% / 0.5% / 4.5%).
* :func:`recbole_ratio`: RecBole 1.2.1's ``RS`` split (``eval_args.split: {'RS': [0.8, 0.1, 0.1]}``)
  after its ``RO`` (random) or ``TO`` (time) ordering, per user or global, with its rounding rule.
* :func:`recbole_leave_one_out`: RecBole 1.2.1's ``LS`` split (``valid_and_test`` / ``valid_only``
  / ``test_only``) of a sequential dataset, in terms of the log's rows.
* :func:`recbole_timestamps`: timestamps as RecBole orders them (float32, min-max normalised when its
  dataset config says ``normalize_all``), as integer ranks: distinct times that RecBole cannot tell
  apart become ties, kept in the file's order.

**Order.** Every split orders rows with :mod:`jaxrec.data.order`: by timestamp, rows with equal
timestamps in arrival order (the log's row order, i.e. the file's), or shuffled with
``tie_order="shuffle"`` and ``tie_seed``. Ties are never broken by item id (that order made the
held-out item predictable from its id, issue 8). Each part is emitted in that order, so a consumer
that orders a part (or ``train.concat(valid)``) by arrival recovers the split's order.

**Repeats.** :func:`leave_last_out`, :func:`user_holdout` and :func:`context_holdout` evaluate
"the next item" of a user, so by default (``deduplicate=True``) they first keep only the earliest of
repeated (user, item) rows (:func:`jaxrec.data.preprocess.deduplicate`), as the TP/SASRec protocols
do: a test positive is then never an item the user already had in train or validation. Pass
``deduplicate=False`` only for a protocol that evaluates repeat consumption. The whole protocol
(split, de-duplication, ties, exclusions, negatives) of each paper is one object in
:mod:`jaxrec.eval.paper_protocols`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxrec.data import order as order_lib
from jaxrec.data import preprocess
from jaxrec.data.log import DataError, InteractionLog


@dataclasses.dataclass(frozen=True)
class Split:
  """Train/validation/test logs sharing one index space.

  Attributes:
    train, valid, test: the three parts (``valid`` may be empty).
    protocol: the name of the protocol that made them.
    info: protocol-specific details (boundaries, held-out users, ...).
  """

  train: InteractionLog
  valid: InteractionLog
  test: InteractionLog
  protocol: str
  info: dict = dataclasses.field(default_factory=dict)


def _check_nonempty(log: InteractionLog, what: str):
  if len(log) == 0:
    raise DataError(f"{log.name}: {what} needs a non-empty log")


def _time_order(log: InteractionLog, tie_order: str, tie_seed: int) -> np.ndarray:
  """Global time order, ties in arrival order or shuffled (:func:`jaxrec.data.order.time_order`)."""
  return order_lib.time_order(log.timestamp, ties=tie_order, seed=tie_seed)


def _positions(log: InteractionLog, tie_order: str, tie_seed: int) -> order_lib.UserPositions:
  """Per-user time order (:func:`jaxrec.data.order.user_positions`)."""
  return order_lib.user_positions(log.user, log.timestamp, log.num_users, ties=tie_order,
                                  seed=tie_seed)


def _maybe_deduplicate(log: InteractionLog, deduplicate: bool) -> tuple[InteractionLog, int]:
  """The log with repeated (user, item) rows dropped (earliest kept) if asked; and how many went."""
  if not deduplicate:
    return log, 0
  out = preprocess.deduplicate(log, keep="first")
  return out, len(log) - len(out)


def chronological(log: InteractionLog, ratios: Sequence[float] = (0.7, 0.1, 0.2),
                  ties: str = "split", tie_order: str = "arrival", tie_seed: int = 0) -> Split:
  """Global time-ordered split by ratios (2TS paper 000, Sec. 5).

  Repeated (user, item) rows are kept (2TS predicts every interaction, repeats included).
  Rows are ordered by timestamp, ties in arrival order (module docstring); the
  first ``floor(r0 n)`` go to train, the next ``floor((r0 + r1) n) - floor(r0 n)``
  to validation, the rest to test. Hence ``max(train.t) <= min(valid.t) <= min(test.t)`` always.

  Args:
    log: the log.
    ratios: three non-negative fractions summing to 1.
    ties: ``"split"`` cuts at the exact row counts (rows sharing the boundary
      timestamp may land on both sides, deterministically, as in RecBole's
      ``TO`` ordering); ``"earlier"`` moves every row tied with the last row of
      a part into that part, so the inequalities above become strict.
    tie_order: order of rows with equal timestamps, ``"arrival"`` or ``"shuffle"``.
    tie_seed: seed of ``tie_order="shuffle"``.

  Returns:
    A :class:`Split` with ``info["boundaries"]`` (row counts) and
    ``info["boundary_times"]`` (first timestamp of valid and test, or None).
  """
  _check_nonempty(log, "chronological")
  ratios = np.asarray(ratios, np.float64)
  if ratios.shape != (3,) or np.any(ratios < 0) or abs(ratios.sum() - 1.0) > 1e-6:
    raise ValueError(f"chronological: ratios must be 3 non-negative numbers summing to 1, got {ratios}")
  if ties not in ("split", "earlier"):
    raise ValueError(f"chronological: ties must be 'split' or 'earlier', got {ties!r}")
  order = _time_order(log, tie_order, tie_seed)
  ts = log.timestamp[order]
  n = len(log)
  cuts = np.floor(np.cumsum(ratios)[:2] * n + 1e-9).astype(np.int64)
  if ties == "earlier":
    cuts = np.array([np.searchsorted(ts, ts[c - 1], side="right") if c > 0 else 0 for c in cuts])
  a, b = int(cuts[0]), int(cuts[1])
  parts = [log.take(order[:a]), log.take(order[a:b]), log.take(order[b:])]
  info = {"ratios": tuple(ratios.tolist()), "boundaries": (a, b), "ties": ties,
          "tie_order": tie_order,
          "boundary_times": (int(ts[a]) if a < n else None, int(ts[b]) if b < n else None)}
  return Split(*parts, protocol="chronological", info=info)


def periods(log: InteractionLog, num_periods: int, mode: str = "count", tie_order: str = "arrival",
            tie_seed: int = 0) -> list[InteractionLog]:
  """Splits a log into consecutive periods ``D_0 .. D_{T}`` (SML paper 003, Sec. 2).

  Args:
    log: the log.
    num_periods: number of periods.
    mode: ``"count"``: equal numbers of interactions per period (time order,
      ties in arrival order); ``"calendar"``: equal time spans between the first
      and last timestamp (a period may then be empty).
    tie_order: order of rows with equal timestamps, ``"arrival"`` or ``"shuffle"``.
    tie_seed: seed of ``tie_order="shuffle"``.

  Returns:
    ``num_periods`` logs in time order; every row of ``D_t`` is no later than
    any row of ``D_{t+1}``.
  """
  _check_nonempty(log, "periods")
  if num_periods < 1:
    raise ValueError(f"periods: num_periods must be >= 1, got {num_periods}")
  order = _time_order(log, tie_order, tie_seed)
  if mode == "count":
    if num_periods > len(log):
      raise DataError(f"{log.name}: periods(num_periods={num_periods}) exceeds the {len(log)} interactions")
    chunks = np.array_split(order, num_periods)
  elif mode == "calendar":
    ts = log.timestamp[order]
    t0, t1 = int(ts[0]), int(ts[-1]) + 1
    edges = t0 + (np.arange(num_periods + 1, dtype=np.int64) * (t1 - t0)) // num_periods
    pos = np.searchsorted(ts, edges, side="left")
    chunks = [order[pos[p]:pos[p + 1]] for p in range(num_periods)]
  else:
    raise ValueError(f"periods: mode must be 'count' or 'calendar', got {mode!r}")
  return [log.take(c) for c in chunks]


def period_ranges(num_periods: int, num_valid: int = 1, num_test: int = 1,
                  num_pretrain: int = 0) -> dict[str, range]:
  """Period index ranges of the SML protocol (paper 003, Sec. 4.1).

  Periods ``[0, num_pretrain)`` pre-train a base model, the following ones up to
  the validation periods train the method sequentially, then ``num_valid``
  validation periods and the last ``num_test`` test periods (each evaluated on
  the model retrained on all earlier periods).
  """
  first_valid = num_periods - num_valid - num_test
  if min(num_valid, num_test, num_pretrain) < 0 or first_valid <= num_pretrain:
    raise ValueError(f"period_ranges: {num_periods} periods cannot hold pretrain={num_pretrain}, "
                     f"valid={num_valid}, test={num_test} and at least one training period")
  return {"pretrain": range(0, num_pretrain), "train": range(num_pretrain, first_valid),
          "valid": range(first_valid, first_valid + num_valid),
          "test": range(first_valid + num_valid, num_periods)}


def leave_last_out(log: InteractionLog, deduplicate: bool = True, tie_order: str = "arrival",
                   tie_seed: int = 0) -> Split:
  """Per user: last interaction -> test, second to last -> validation, rest -> train (TP paper 001).

  A user's rows are ordered by timestamp, ties in arrival order (module docstring; never by item
  id). Users with fewer than 3 interactions keep all their rows in train (they have no valid/test
  row); ``info["eval_users"]`` lists the users that have one.

  Args:
    log: the log.
    deduplicate: first keep only the earliest of repeated (user, item) rows (default), so that no
      test or validation positive is an item the user already had. **With ``False``, a repeated
      item can be a test positive that is also a known (training) item.**
    tie_order: order of rows with equal timestamps, ``"arrival"`` or ``"shuffle"``.
    tie_seed: seed of ``tie_order="shuffle"``.
  """
  _check_nonempty(log, "leave_last_out")
  log, dropped = _maybe_deduplicate(log, deduplicate)
  up = _positions(log, tie_order, tie_seed)
  order, from_end = up.order, up.from_end
  eligible = up.count >= 3
  test = eligible & (from_end == 0)
  valid = eligible & (from_end == 1)
  train = ~(test | valid)
  info = {"eval_users": np.unique(log.user[order[test]]), "min_interactions": 3,
          "deduplicated": deduplicate, "duplicates_dropped": dropped, "tie_order": tie_order}
  return Split(log.take(order[train]), log.take(order[valid]), log.take(order[test]),
               protocol="leave_last_out", info=info)


def user_holdout(log: InteractionLog, new_fraction: float = 0.2, valid_fraction: float = 0.0,
                 seed: int = 0, deduplicate: bool = True, tie_order: str = "arrival",
                 tie_seed: int = 0) -> Split:
  """Existing vs new users (TP paper 001: 80% existing, 20% new).

  Users present in the log are permuted with ``np.random.default_rng(seed)``; the
  first ``round(new_fraction * U)`` are new (all their rows -> test), the next
  ``round(valid_fraction * U)`` validation users (all rows -> valid), the rest
  existing (train). ``info`` holds ``new_users``, ``valid_users``, ``existing_users``
  (sorted int arrays). Each part's rows are grouped by user in time order (ties per
  ``tie_order``). ``deduplicate`` (default True) first keeps the earliest of repeated
  (user, item) rows, as in :func:`leave_last_out`.
  """
  _check_nonempty(log, "user_holdout")
  log, dropped = _maybe_deduplicate(log, deduplicate)
  if new_fraction < 0 or valid_fraction < 0 or new_fraction + valid_fraction >= 1:
    raise ValueError(f"user_holdout: need fractions >= 0 summing to < 1, got new={new_fraction}, "
                     f"valid={valid_fraction}")
  present = np.flatnonzero(log.user_counts())
  perm = np.random.default_rng(seed).permutation(present)
  n_new = int(round(new_fraction * present.size))
  n_valid = int(round(valid_fraction * present.size))
  new = np.sort(perm[:n_new])
  valid_users = np.sort(perm[n_new:n_new + n_valid])
  existing = np.sort(perm[n_new + n_valid:])
  group = np.zeros(log.num_users, np.int8)  # 0 train, 1 valid, 2 test
  group[valid_users] = 1
  group[new] = 2
  order = _positions(log, tie_order, tie_seed).order
  g = group[log.user[order]]
  info = {"new_users": new, "valid_users": valid_users, "existing_users": existing, "seed": seed,
          "deduplicated": deduplicate, "duplicates_dropped": dropped, "tie_order": tie_order}
  return Split(log.take(order[g == 0]), log.take(order[g == 1]), log.take(order[g == 2]),
               protocol="user_holdout", info=info)


def user_holdout_last(log: InteractionLog, new_fraction: float = 0.2, valid_item: bool = True,
                      min_item_count: int = 0, min_user_count: int = 0, seed: int = 0,
                      deduplicate: bool = True, tie_order: str = "arrival", tie_seed: int = 0) -> Split:
  """TP's full protocol (paper 001, Sec. 4.1): filters, existing vs new users, last item as the test.

  Items with fewer than ``min_item_count`` rows are removed, then users with fewer than
  ``min_user_count`` rows (one pass each, in that order, as the paper describes; not iterated to a
  k-core, so an item may fall below the threshold after the user filter). The remaining users are
  permuted with ``np.random.default_rng(seed)`` and the first ``round(new_fraction * U)`` are new.
  Every user's most recent row is a test row. Existing users: with ``valid_item`` their second most
  recent row is a validation row (a departure from the paper, which selects no epoch; without it
  the rest is trained on exactly as in the paper), the rest is train. New users are never trained
  on: their earlier rows are ``info["test_context"]`` (an :class:`InteractionLog`), the input of
  their test query and its known items. ``info`` also holds ``new_users`` and ``existing_users``
  (sorted int arrays). Time order, ties and ``deduplicate`` as in :func:`leave_last_out`.
  """
  _check_nonempty(log, "user_holdout_last")
  log, dropped = _maybe_deduplicate(log, deduplicate)
  if not 0 <= new_fraction < 1:
    raise ValueError(f"user_holdout_last: need 0 <= new_fraction < 1, got {new_fraction}")
  before = len(log)
  if min_item_count > 0:
    log = preprocess.k_core(log, item_k=min_item_count, max_rounds=1)
  if min_user_count > 0:
    log = preprocess.k_core(log, user_k=min_user_count, max_rounds=1)
  present = np.flatnonzero(log.user_counts())
  perm = np.random.default_rng(seed).permutation(present)
  n_new = int(round(new_fraction * present.size))
  new, existing = np.sort(perm[:n_new]), np.sort(perm[n_new:])
  is_new = np.zeros(log.num_users, bool)
  is_new[new] = True
  up = _positions(log, tie_order, tie_seed)
  order, from_end = up.order, up.from_end
  newrow = is_new[up.user]
  test = from_end == 0
  valid = ~newrow & (from_end == 1) & valid_item
  context = newrow & ~test
  train = ~(test | valid | context)
  info = {"new_users": new, "existing_users": existing, "seed": seed,
          "test_context": log.take(order[context]), "filtered_rows": before - len(log),
          "min_item_count": min_item_count, "min_user_count": min_user_count,
          "deduplicated": deduplicate, "duplicates_dropped": dropped, "tie_order": tie_order}
  return Split(log.take(order[train]), log.take(order[valid]), log.take(order[test]),
               protocol="user_holdout_last", info=info)


def context_holdout(log: InteractionLog, valid_fraction: float = 0.1, test_fraction: float = 0.1,
                    min_interactions: int = 16, seed: int = 0, deduplicate: bool = True,
                    tie_order: str = "arrival", tie_seed: int = 0) -> Split:
  """Disjoint validation/test users with a context half (tree paper 004, Appendix).

  Users with ``>= min_interactions`` rows are eligible; ``round(valid_fraction *
  U)`` and ``round(test_fraction * U)`` of the ``U`` users present are drawn from
  them (``np.random.default_rng(seed)``). For each held-out user, the first
  ``floor(n / 2)`` rows in time order are context and go to train; the rest are
  the ground truth in valid/test. All other users' rows are train.
  ``info``: ``valid_users``, ``test_users``. Time order and ``deduplicate`` (default True:
  a ground-truth item is never one of the user's context items) as in :func:`leave_last_out`.
  """
  _check_nonempty(log, "context_holdout")
  log, dropped = _maybe_deduplicate(log, deduplicate)
  counts = log.user_counts()
  present = np.flatnonzero(counts)
  eligible = np.flatnonzero(counts >= max(min_interactions, 2))
  n_valid = int(round(valid_fraction * present.size))
  n_test = int(round(test_fraction * present.size))
  if n_valid + n_test > eligible.size:
    raise DataError(f"{log.name}: context_holdout needs {n_valid + n_test} users with >= {min_interactions} "
                    f"interactions, only {eligible.size} have")
  perm = np.random.default_rng(seed).permutation(eligible)
  valid_users = np.sort(perm[:n_valid])
  test_users = np.sort(perm[n_valid:n_valid + n_test])
  group = np.zeros(log.num_users, np.int8)
  group[valid_users] = 1
  group[test_users] = 2
  up = _positions(log, tie_order, tie_seed)
  order = up.order
  g = group[up.user]
  truth = up.position >= up.count // 2
  train = (g == 0) | ~truth
  info = {"valid_users": valid_users, "test_users": test_users, "min_interactions": min_interactions,
          "seed": seed, "deduplicated": deduplicate, "duplicates_dropped": dropped,
          "tie_order": tie_order}
  return Split(log.take(order[train]), log.take(order[(g == 1) & truth]), log.take(order[(g == 2) & truth]),
               protocol="context_holdout", info=info)


@dataclasses.dataclass(frozen=True)
class Stream:
  """A prequential stream (MeLON paper 002, "Experimental setting").

  Attributes:
    log: the whole log in time order; ``offline``/``valid``/``test`` are slices of it.
    offline_end, valid_end: row boundaries of the parts in ``log``.
    batch_size: the mini-batch size.
    valid_batches, test_batches: dicts of ``[num_batches, batch_size]`` arrays
      ``user`` (int32), ``item`` (int32), ``timestamp`` (int64), ``index`` (int64 row
      in ``log``, -1 for padding) and ``mask`` (bool). Batches are consecutive in
      time; the last one of each part is padded (with zeros, ``mask`` False).
  """

  log: InteractionLog
  offline_end: int
  valid_end: int
  batch_size: int
  valid_batches: dict
  test_batches: dict

  @property
  def offline(self) -> InteractionLog:
    return self.log.take(np.arange(self.offline_end))

  @property
  def valid(self) -> InteractionLog:
    return self.log.take(np.arange(self.offline_end, self.valid_end))

  @property
  def test(self) -> InteractionLog:
    return self.log.take(np.arange(self.valid_end, len(self.log)))


def _stream_batches(log: InteractionLog, lo: int, hi: int, batch_size: int) -> dict:
  n = hi - lo
  nb = -(-n // batch_size)
  index = np.full(nb * batch_size, -1, np.int64)
  index[:n] = np.arange(lo, hi)
  mask = index >= 0
  safe = np.where(mask, index, 0)
  out = {"user": np.where(mask, log.user[safe], 0).astype(np.int32),
         "item": np.where(mask, log.item[safe], 0).astype(np.int32),
         "timestamp": np.where(mask, log.timestamp[safe], 0).astype(np.int64),
         "index": index, "mask": mask}
  return {k: v.reshape(nb, batch_size) for k, v in out.items()}


def prequential(log: InteractionLog, offline: float = 0.95, valid: float = 0.005, test: float = 0.045,
                batch_size: int = 256, tie_order: str = "arrival", tie_seed: int = 0) -> Stream:
  """Time-ordered prequential protocol (MeLON paper 002: 95% / 0.5% / 4.5%).

  Rows ordered by timestamp, ties in arrival order (or ``tie_order="shuffle"``);
  the first ``floor(offline n)`` rows pre-train offline, the next
  ``floor((offline + valid) n) - floor(offline n)``
  are the validation stream (model selection), the rest the test stream. Each
  stream is cut into ``batch_size`` mini-batches in time order (test-then-train
  on each batch is the consumer's job).
  """
  _check_nonempty(log, "prequential")
  fr = np.array([offline, valid, test], np.float64)
  if np.any(fr < 0) or abs(fr.sum() - 1.0) > 1e-6:
    raise ValueError(f"prequential: offline, valid, test must be >= 0 and sum to 1, got {fr.tolist()}")
  if batch_size < 1:
    raise ValueError(f"prequential: batch_size must be >= 1, got {batch_size}")
  slog = log.take(_time_order(log, tie_order, tie_seed))
  n = len(slog)
  a = int(np.floor(offline * n + 1e-9))
  b = int(np.floor((offline + valid) * n + 1e-9))
  return Stream(log=slog, offline_end=a, valid_end=b, batch_size=batch_size,
                valid_batches=_stream_batches(slog, a, b, batch_size),
                test_batches=_stream_batches(slog, b, n, batch_size))


# -- RecBole 1.2.1's splits ---------------------------------------------------------------------------

RECBOLE_ORDERS = ("RO", "TO")
RECBOLE_TIMESTAMPS = ("exact", "float32", "minmax-float32")


def recbole_timestamps(timestamp: np.ndarray, mode: str = "minmax-float32") -> np.ndarray:
  """Timestamps as RecBole 1.2.1 compares them, as int64 dense ranks (same order, same ties).

  RecBole reads a ``timestamp:float`` column as float64, min-max normalises every float field when the
  dataset's config sets ``normalize_all`` (``Dataset._normalize``: ``(arr - mn) / (mx - mn)``; RecBole's
  own ``properties/dataset/ml-100k.yaml`` does, its default ``sample.yaml`` does not), then stores it as
  ``torch.FloatTensor`` (float32, ``Dataset._dataframe_to_interaction``); its ``TO`` ordering and the
  sequential ``data_augmentation`` sort that float32 column with stable sorts. Two times that round to
  the same float32 are therefore ties, kept in the file's order: on ML-100K (18.6M seconds mapped to
  [0, 1], a float32 step of up to ~1.1 s) its 49,282 distinct timestamps become 49,118, and 5 users'
  validation and 4 users' test rows of the leave-one-out split change. Ordering a log by these ranks
  with :mod:`jaxrec.data.order` (ties in arrival order) gives RecBole's order.

  Args:
    timestamp: int ``[n]`` timestamps in the log's row order.
    mode: ``"minmax-float32"`` (normalised, then float32), ``"float32"`` (float32 of the raw value:
      a step of 64-128 s for unix seconds), or ``"exact"`` (the timestamps' own order).

  Returns:
    int64 ``[n]``: the rank of each row's RecBole time among the distinct ones (0 = earliest).
  """
  if mode not in RECBOLE_TIMESTAMPS:
    raise ValueError(f"recbole_timestamps: mode must be one of {RECBOLE_TIMESTAMPS}, got {mode!r}")
  t = np.asarray(timestamp)
  if t.size == 0 or mode == "exact":
    key = t
  elif mode == "float32":
    key = t.astype(np.float64).astype(np.float32)
  else:
    t = t.astype(np.float64)
    mx, mn = t.max(), t.min()
    key = np.ones(t.shape, np.float32) if mx == mn else ((t - mn) / (mx - mn)).astype(np.float32)
  return np.unique(key, return_inverse=True)[1].reshape(-1).astype(np.int64)

RECBOLE_LS_MODES = {"valid_and_test": 2, "valid_only": 1, "test_only": 1}


def recbole_split_counts(sizes: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
  """RecBole 1.2.1's part sizes for groups of ``sizes`` rows: ``Dataset._calcu_split_ids``, vectorised.

  ``recbole/data/dataset/dataset.py``, ``split_by_ratio`` then ``_calcu_split_ids``: the ratios are
  normalised by their sum (``ratios = [_ / tot_ratio for _ in ratios]``), every part but the first gets
  ``int(ratio * tot)`` rows (truncated), the first the rest; then, for ``i = 1 .. k-1`` (the last part
  first), while the first part has more than one row, a part with ``0 < ratio * tot < 1`` takes one row
  from the first. The float64 products are the same IEEE operations as RecBole's Python floats, so the
  truncations agree exactly (``0.1 * 30 = 3.0000000000000004 -> 3``).

  Args:
    sizes: int ``[G]`` rows per group (per user, or one global group).
    ratios: the ``RS`` ratios, e.g. ``(0.8, 0.1, 0.1)``; need not sum to 1.

  Returns:
    int64 ``[G, len(ratios)]`` rows of each part per group (each row sums to its size).
  """
  ratios = [float(r) for r in ratios]
  if len(ratios) < 2 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
    raise ValueError(f"recbole split: ratios must be >= 2 non-negative numbers with a positive sum, "
                     f"got {ratios}")
  tot_ratio = sum(ratios)  # Python's left-to-right sum, as RecBole's ``sum(ratios)``
  ratios = [r / tot_ratio for r in ratios]
  tot = np.asarray(sizes, np.int64)
  prod = np.stack([r * tot.astype(np.float64) for r in ratios], axis=1)  # [G, k], ratio * tot
  cnt = np.trunc(prod).astype(np.int64)  # int(ratios[i] * tot)
  cnt[:, 0] = tot - cnt[:, 1:].sum(axis=1)
  for i in range(1, len(ratios)):  # a loop over the parts (k - 1 steps), not over groups
    # ``if cnt[0] <= 1: break``: cnt[0] only decreases, so the break is this mask at every later i.
    take = (cnt[:, 0] > 1) & (prod[:, -i] > 0) & (prod[:, -i] < 1)
    cnt[:, -i] += take
    cnt[:, 0] -= take
  return cnt


def recbole_ratio(log: InteractionLog, ratios: Sequence[float] = (0.8, 0.1, 0.1), order: str = "RO",
                  group_by: str = "user", seed: int = 0, tie_order: str = "arrival",
                  tie_seed: int = 0) -> Split:
  """RecBole 1.2.1's ratio split ``RS`` (its default for general models: ``RO``, 8/1/1, by user).

  Follows ``recbole/data/dataset/dataset.py`` ``Dataset.build`` -> ``split_by_ratio``:

  * ordering (``eval_args.order``): ``"RO"`` shuffles every row (``Interaction.shuffle``,
    ``torch.randperm``; here ``np.random.default_rng(seed).permutation``, so the rule is RecBole's and
    the draw is not); ``"TO"`` sorts by timestamp with a stable sort (``np.argsort(kind="stable")``:
    ties keep the file's order), i.e. :func:`jaxrec.data.order.time_order` with ``tie_order``;
  * ``group_by="user"``: ``_grouped_index`` collects each user's rows in that order (so with ``RO`` a
    user's rows are in a uniformly random order), and each user's rows are cut by
    :func:`recbole_split_counts` (first part train, then validation, then test); ``group_by="none"``
    cuts the whole ordered log once by the same rule.

  No de-duplication and no filtering: RecBole's defaults (``rm_dup_inter: ~``, no k-core) keep every
  row, so a repeated (user, item) may land in two parts. Every row lands in exactly one part.

  Args:
    log: the log.
    ratios: three ratios (train, valid, test); normalised by their sum as RecBole does.
    order: ``"RO"`` (random) or ``"TO"`` (time).
    group_by: ``"user"`` or ``"none"``.
    seed: seed of the ``RO`` shuffle.
    tie_order, tie_seed: order of rows with equal timestamps under ``TO``.

  Returns:
    A :class:`Split` (parts emitted user by user in the split's order for ``group_by="user"``, in the
    global order otherwise); ``info["counts"]`` is the int64 ``[num_users, 3]`` part sizes per user.
  """
  _check_nonempty(log, "recbole_ratio")
  if len(ratios) != 3:
    raise ValueError(f"recbole_ratio: need 3 ratios (train, valid, test), got {tuple(ratios)}")
  if order not in RECBOLE_ORDERS:
    raise ValueError(f"recbole_ratio: order must be one of {RECBOLE_ORDERS}, got {order!r}")
  if group_by not in ("user", "none"):
    raise ValueError(f"recbole_ratio: group_by must be 'user' or 'none', got {group_by!r}")
  n = len(log)
  if order == "RO":
    seq = np.random.default_rng(seed).permutation(n).astype(np.int64)
  else:
    seq = _time_order(log, tie_order, tie_seed)
  if group_by == "none":
    counts = recbole_split_counts(np.array([n]), ratios)[0]
    cut = np.cumsum(counts)[:-1]
    parts = np.split(seq, cut)
    per_user = np.stack([np.bincount(log.user[p], minlength=log.num_users) for p in parts], axis=1)
  else:
    grouped = seq[np.argsort(log.user[seq], kind="stable")]  # users ascending, each in `seq` order
    user = log.user[grouped].astype(np.int64)
    sizes = np.bincount(user, minlength=log.num_users).astype(np.int64)
    per_user = recbole_split_counts(sizes, ratios)
    starts = np.cumsum(sizes) - sizes
    position = np.arange(n, dtype=np.int64) - starts[user]
    ends = np.cumsum(per_user, axis=1)[user]  # [n, 3]: end of train, valid, test within the user
    part = (position[:, None] >= ends[:, :2]).sum(axis=1)
    parts = [grouped[part == k] for k in range(3)]
  info = {"ratios": tuple(float(r) for r in ratios), "order": order, "group_by": group_by,
          "seed": seed, "tie_order": tie_order, "counts": per_user.astype(np.int64)}
  return Split(log.take(parts[0]), log.take(parts[1]), log.take(parts[2]), protocol="recbole_ratio",
               info=info)


def recbole_leave_one_out(log: InteractionLog, mode: str = "valid_and_test", tie_order: str = "arrival",
                          tie_seed: int = 0) -> Split:
  """RecBole 1.2.1's leave-one-out ``LS`` of a sequential dataset, as parts of the log's rows.

  RecBole (``recbole/data/dataset/sequential_dataset.py``, ``data_augmentation``) first sorts by
  ``[user, timestamp]`` with stable sorts (ties keep the file's order: :mod:`jaxrec.data.order` with
  ``tie_order="arrival"``) and turns every row of a user but the first into a target whose input is
  the up to ``MAX_ITEM_LIST_LENGTH`` rows before it; ``Dataset.build`` (``order: TO``) then splits each
  user's targets with ``_split_index_by_leave_one_out``: with ``m = n - 1`` targets of a user with
  ``n`` rows it holds out ``legal = min(leave_one_num, m - 1)`` targets (``valid_and_test``: 2, the
  last the test, the one before it the validation; with only one held out it is the *test* one;
  ``valid_only`` / ``test_only``: 1). In rows of the log, for ``valid_and_test``:

  * ``n >= 4``: the last row is the test, the second to last the validation, the rest train;
  * ``n == 3``: the last row is the test, no validation row, two train rows (one a training target);
  * ``n <= 2``: every row is train (RecBole drops a user with one row: it has no target).

  Repeats are kept (RecBole's ``rm_dup_inter: ~``): a test item may also be a training item. Training
  rows' targets, and the validation/test queries' histories, are the rows before them in this order
  (:func:`jaxrec.train.fit.query_features` on ``[train, valid, test]``).

  Args:
    log: the log.
    mode: ``"valid_and_test"``, ``"valid_only"`` or ``"test_only"`` (``eval_args.split.LS``).
    tie_order, tie_seed: order of rows with equal timestamps.

  Returns:
    A :class:`Split` (parts in (user, time, arrival) order); ``info["eval_users"]`` lists users with a
    test row (``valid_only``: a validation row).
  """
  _check_nonempty(log, "recbole_leave_one_out")
  if mode not in RECBOLE_LS_MODES:
    raise ValueError(f"recbole_leave_one_out: mode must be one of {sorted(RECBOLE_LS_MODES)}, "
                     f"got {mode!r}")
  up = _positions(log, tie_order, tie_seed)
  order, from_end = up.order, up.from_end
  # legal = min(leave_one_num, targets - 1) with targets = n - 1 (at least 0)
  legal = np.clip(np.minimum(RECBOLE_LS_MODES[mode], up.count - 2), 0, None)
  held = from_end < legal
  if mode == "valid_and_test":
    test = held & (from_end == 0)
    valid = held & (from_end == 1)
  elif mode == "valid_only":
    test, valid = np.zeros_like(held), held
  else:
    test, valid = held, np.zeros_like(held)
  train = ~held
  info = {"eval_users": np.unique(log.user[order[valid if mode == "valid_only" else test]]),
          "mode": mode, "tie_order": tie_order}
  return Split(log.take(order[train]), log.take(order[valid]), log.take(order[test]),
               protocol="recbole_leave_one_out", info=info)


SPLITS = {
    "chronological": chronological,
    "leave_last_out": leave_last_out,
    "user_holdout": user_holdout,
    "user_holdout_last": user_holdout_last,
    "context_holdout": context_holdout,
    "recbole_ratio": recbole_ratio,
    "recbole_leave_one_out": recbole_leave_one_out,
}


def make_split(log: InteractionLog, name: str, **options) -> Split:
  """Applies the split called ``name`` (a key of :data:`SPLITS`); experiment binaries' ``--split``."""
  if name not in SPLITS:
    raise ValueError(f"unknown split {name!r}; known: {sorted(SPLITS)}")
  return SPLITS[name](log, **options)
