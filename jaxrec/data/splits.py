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



SPLITS = {
    "chronological": chronological,
    "leave_last_out": leave_last_out,
    "user_holdout": user_holdout,
    "user_holdout_last": user_holdout_last,
    "context_holdout": context_holdout,
}


def make_split(log: InteractionLog, name: str, **options) -> Split:
  """Applies the split called ``name`` (a key of :data:`SPLITS`); experiment binaries' ``--split``."""
  if name not in SPLITS:
    raise ValueError(f"unknown split {name!r}; known: {sorted(SPLITS)}")
  return SPLITS[name](log, **options)
