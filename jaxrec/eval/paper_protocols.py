"""Each paper's evaluation protocol as one object: split, repeats, tie order, exclusions, negatives.

A protocol is more than a split: whether repeated (user, item) rows are dropped first, how rows with
equal timestamps are ordered, which items are removed from a query's candidates, and how many
negatives the sampled protocol draws (and from which distribution) all change the numbers. An
:class:`EvalProtocol` names all of them, :func:`prepare` applies them to a log, and
:meth:`EvalProtocol.rankings` gives the ranking protocols (:mod:`jaxrec.eval.protocols`) to
evaluate with. Each paper's protocol is written down once, in :data:`PROTOCOLS`:

* ``"leave-last-out"``: TP (paper 001, Sec. 4.1) / SASRec style next-item evaluation. Repeats
  dropped (earliest kept), per user the last interaction is the test item and the second to last
  the validation item (:func:`jaxrec.data.splits.leave_last_out`), the user's known items are
  excluded, 99 uniform sampled negatives and full ranking.
* ``"user-holdout"``: TP (paper 001, Sec. 4.1) existing/new users, 80% / 20% (every row of a new
  user a query; no filters).
* ``"tp-user-holdout"``: TP's whole protocol (paper 001, Sec. 4.1): items with < 5 then users with
  < 10 interactions removed, 80% existing / 20% new users, each user's most recent item the test
  item (a new user's earlier items are the query's input and known items, never trained on), the
  existing users' second most recent item the validation item, known items excluded, HR/NDCG
  under full ranking and 100 uniform sampled negatives
  (:func:`jaxrec.data.splits.user_holdout_last`).
* ``"context-holdout"``: the tree two-stage paper (004, Appendix D.2): 10% validation and 10% test
  users whose first half is context and second half ground truth.
* ``"2ts-chronological"``: 2TS (paper 000, Sec. 5): interactions sorted by time, first 70% train,
  next 10% validation, last 20% test; repeat consumption kept; every interaction is ranked against
  499 negatives "randomly sampled from the set of all items", so nothing is excluded (a negative
  may be an item the user had before); full ranking reported next to it.
* ``"chronological"``: the same 70/10/20 split with jaxrec's filtered evaluation (known items
  excluded, 99 negatives + full), used by ``experiments/two_time_scale.py`` and ``--split=
  chronological`` of the binaries.
* ``"recbole-random-811"``: RecBole 1.2.1's default for general models (``recbole/properties/overall.yaml``:
  ``eval_args: {split: {RS: [0.8, 0.1, 0.1]}, group_by: user, order: RO, mode: full}``): every rating a
  positive (no ``threshold``), no k-core, repeats kept; each user's rows shuffled and cut 8/1/1 by
  RecBole's rounding (:func:`jaxrec.data.splits.recbole_ratio`); one query per user whose held-out
  items are one ground-truth set (``FullSortEvalDataLoader``: Recall@K = |top-K ∩ truth| / |truth|,
  NDCG with the ideal DCG of ``min(|truth|, K)`` hits), the user's training items (training +
  validation at test time) excluded, full ranking only. ``"recbole-time-811"``: the same with ``order:
  TO`` (each user's rows in time order, ties in the file's order).
* ``"recbole-leave-one-out"``: RecBole 1.2.1's default for sequential models
  (``recbole/properties/quick_start_config/sequential.yaml``: ``eval_args: {split: {LS:
  valid_and_test}, order: TO, mode: full}``): repeats kept, per user the last row the test and the one
  before it the validation (:func:`jaxrec.data.splits.recbole_leave_one_out`), ties in the file's
  order, one query per held-out row whose input is the last ``MAX_ITEM_LIST_LENGTH = 50`` rows before
  it (:attr:`EvalProtocol.max_history`), full ranking over every item with nothing excluded
  (``FullSortEvalDataLoader`` gives sequential models no history to mask).
  All three read time as RecBole stores it for ML-100K (``timestamps="minmax-float32"``: min-max
  normalised float32, :func:`jaxrec.data.splits.recbole_timestamps`), so times within ~1 s can tie and
  then keep the file's order, as in RecBole; for a dataset RecBole does not normalise use
  ``.replace(timestamps="float32")``.
* ``"prequential"``: MeLON (paper 002, "Experimental setting"): 95% offline / 0.5% validation /
  4.5% test stream. Only the split fields: the stream is evaluated test-then-train by its
  consumer, not through :class:`~jaxrec.eval.queries.Queries`; :meth:`EvalProtocol.split_log`
  returns the :class:`jaxrec.data.splits.Stream`.

Rows with equal timestamps are ordered as they arrived (the file's order), never by item id (see
:mod:`jaxrec.data.order`); ``ties="shuffle"`` with ``tie_seed`` measures the sensitivity to it.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping, Optional, Union

import numpy as np

from jaxrec.data import order as order_lib
from jaxrec.data import preprocess, splits
from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols as protocols_lib
from jaxrec.eval.queries import Queries

EXCLUDE = ("known", "none")
NEGATIVES = ("uniform", "popularity")
_SPLIT_FNS = dict(splits.SPLITS, prequential=splits.prequential)


def _accepts(split: str, name: str) -> bool:
  return name in inspect.signature(_SPLIT_FNS[split]).parameters


@dataclasses.dataclass(frozen=True)
class EvalProtocol:
  """Everything that defines an evaluation protocol.

  Attributes:
    name: the protocol's name (a key of :data:`PROTOCOLS` for the named ones).
    split: a :data:`jaxrec.data.splits.SPLITS` name, or ``"prequential"``.
    split_options: keyword options of the split function (ratios, fractions, seed, ...), stored
      as sorted ``(key, value)`` pairs so the protocol stays hashable; a dict is accepted.
    deduplicate: keep only the earliest of repeated (user, item) rows before splitting.
    ties: order of rows with equal timestamps, ``"arrival"`` (the log's row order) or
      ``"shuffle"`` (seeded by ``tie_seed``); see :mod:`jaxrec.data.order`.
    tie_seed: seed of ``ties="shuffle"``.
    exclude: which items leave a query's candidates: ``"known"``, the user's known positives
      (training items; training + validation at test time), or ``"none"``.
    num_negatives: negatives per positive of the sampled protocol (``None``: no sampled protocol).
    negatives: ``"uniform"`` or ``"popularity"`` (proportional to training counts).
    negative_seed: seed of the sampled candidates.
    full_ranking: whether full ranking is reported.
    group_by_user: one query per user whose held-out items (repeats counted once) are one
      ground-truth set (:meth:`jaxrec.eval.queries.Queries.from_log` with ``group_by_user``; metrics per
      user), as RecBole's full-sort evaluation of general models; False: one query per held-out row.
      Only with full ranking (``num_negatives=None``).
    max_history: the most recent rows a sequence model reads as a query's input under this protocol
      (RecBole's ``MAX_ITEM_LIST_LENGTH``), or None: the consumer's choice.
    timestamps: ``"exact"``, or how RecBole stores time (``"float32"``, ``"minmax-float32"``: its
      ML-100K config): the log's timestamps are replaced by the ranks of
      :func:`jaxrec.data.splits.recbole_timestamps` before splitting, so that times RecBole cannot tell
      apart are ties in the file's order for the split and for every consumer of the prepared log.
    reference: where the protocol is described (paper and section).
  """

  name: str
  split: str
  split_options: Any = ()
  deduplicate: bool = False
  ties: str = "arrival"
  tie_seed: int = 0
  exclude: str = "known"
  num_negatives: Optional[int] = 99
  negatives: str = "uniform"
  negative_seed: int = 0
  full_ranking: bool = True
  group_by_user: bool = False
  max_history: Optional[int] = None
  timestamps: str = "exact"
  reference: str = ""

  def __post_init__(self):
    opts = self.split_options
    opts = tuple(sorted((dict(opts) if not isinstance(opts, Mapping) else opts).items()))
    object.__setattr__(self, "split_options", opts)
    if self.split not in _SPLIT_FNS:
      raise ValueError(f"EvalProtocol {self.name!r}: unknown split {self.split!r}; known: "
                       f"{sorted(_SPLIT_FNS)}")
    bad = [k for k, _ in opts if not _accepts(self.split, k)]
    if bad or any(k in ("tie_order", "tie_seed", "deduplicate") for k, _ in opts):
      raise ValueError(f"EvalProtocol {self.name!r}: split {self.split!r} options {bad or opts} "
                       f"not allowed (ties and de-duplication are fields of the protocol)")
    if self.ties not in order_lib.TIES:
      raise ValueError(f"EvalProtocol {self.name!r}: ties must be one of {order_lib.TIES}")
    if self.exclude not in EXCLUDE:
      raise ValueError(f"EvalProtocol {self.name!r}: exclude must be one of {EXCLUDE}")
    if self.negatives not in NEGATIVES:
      raise ValueError(f"EvalProtocol {self.name!r}: negatives must be one of {NEGATIVES}")
    if self.num_negatives is not None and self.num_negatives < 1:
      raise ValueError(f"EvalProtocol {self.name!r}: num_negatives must be >= 1 or None")
    if self.group_by_user and (self.num_negatives is not None or not self.full_ranking):
      raise ValueError(f"EvalProtocol {self.name!r}: group_by_user queries need full ranking and no "
                       f"sampled negatives (the other positives of a user would not be candidates)")
    if self.timestamps not in splits.RECBOLE_TIMESTAMPS:
      raise ValueError(f"EvalProtocol {self.name!r}: timestamps must be one of "
                       f"{splits.RECBOLE_TIMESTAMPS}")
    if self.max_history is not None and self.max_history < 1:
      raise ValueError(f"EvalProtocol {self.name!r}: max_history must be >= 1 or None")

  @property
  def options(self) -> dict:
    """The split options as a dict."""
    return dict(self.split_options)

  def replace(self, **changes) -> "EvalProtocol":
    """A copy with some fields changed (``split_options`` may be a dict)."""
    return dataclasses.replace(self, **changes)

  def with_seed(self, seed: int) -> "EvalProtocol":
    """The protocol with every seed set to ``seed``: the split's (if any), ties', negatives'."""
    opts = self.options
    if _accepts(self.split, "seed"):
      opts["seed"] = seed
    return self.replace(split_options=opts, tie_seed=seed, negative_seed=seed)

  def apply_timestamps(self, log: InteractionLog) -> InteractionLog:
    """``log`` with its timestamps read as the protocol says (:attr:`timestamps`)."""
    if self.timestamps == "exact":
      return log
    return dataclasses.replace(log, timestamp=splits.recbole_timestamps(log.timestamp, self.timestamps))

  def split_log(self, log: InteractionLog) -> Union[splits.Split, splits.Stream]:
    """De-duplicates (if asked) and splits ``log`` with the protocol's tie order and timestamps."""
    log = self.apply_timestamps(log)
    if self.deduplicate:
      log = preprocess.deduplicate(log, keep="first")
    kwargs = dict(self.options, tie_order=self.ties, tie_seed=self.tie_seed)
    if _accepts(self.split, "deduplicate"):
      kwargs["deduplicate"] = False  # done above, or repeats deliberately kept
    return _SPLIT_FNS[self.split](log, **kwargs)

  def rankings(self, item_counts: Optional[np.ndarray] = None,
               chunk_size: int = 2048) -> dict[str, protocols_lib.Protocol]:
    """``{"full": FullRanking, "sampled<N>": Sampled(N)}`` as the protocol says.

    Args:
      item_counts: training item counts; required for ``negatives="popularity"``.
      chunk_size: items per full-ranking chunk.
    """
    out = {}
    if self.full_ranking:
      out["full"] = protocols_lib.FullRanking(chunk_size=chunk_size)
    if self.num_negatives is not None:
      pop = self.negatives == "popularity"
      if pop and item_counts is None:
        raise ValueError(f"EvalProtocol {self.name!r}: popularity negatives need item_counts")
      out[f"sampled{self.num_negatives}"] = protocols_lib.Sampled(
          num_negatives=self.num_negatives, seed=self.negative_seed, popularity=pop,
          item_counts=None if not pop else np.asarray(item_counts, np.float64))
    return out

  def describe(self) -> str:
    parts = [self.split + (f" {self.options}" if self.options else ""),
             "repeats dropped (earliest kept)" if self.deduplicate else "repeats kept",
             f"ties {self.ties}" + (f" (seed {self.tie_seed})" if self.ties == "shuffle" else ""),
             "known items excluded" if self.exclude == "known" else "no exclusions"]
    if self.group_by_user:
      parts.append("one query per user (held-out items one ground-truth set)")
    if self.max_history is not None:
      parts.append(f"histories of <= {self.max_history} rows")
    if self.timestamps != "exact":
      parts.append(f"time as RecBole stores it ({self.timestamps})")
    if self.num_negatives is not None:
      parts.append(f"{self.num_negatives} {self.negatives} negatives")
    if self.full_ranking:
      parts.append("full ranking")
    return f"{self.name}: " + ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """A log prepared under a protocol: the split and the validation/test queries.

  Attributes:
    protocol: the :class:`EvalProtocol`.
    log: the log the split was made from (timestamps as the protocol reads them, after
      de-duplication if the protocol asks for it).
    split: the :class:`jaxrec.data.splits.Split`.
    valid_queries: one query per validation row; known items: training (``exclude="known"``).
    test_queries: one query per test row; known items: training + validation.
  """

  protocol: EvalProtocol
  log: InteractionLog
  split: splits.Split
  valid_queries: Queries
  test_queries: Queries

  @property
  def num_items(self) -> int:
    return self.log.num_items

  def rankings(self, chunk_size: int = 2048) -> dict[str, protocols_lib.Protocol]:
    """The protocol's ranking protocols, popularity negatives weighted by training counts."""
    return self.protocol.rankings(self.split.train.item_counts(), chunk_size=chunk_size)


def prepare(log: InteractionLog, protocol: Union[str, EvalProtocol]) -> PreparedData:
  """Applies ``protocol`` (an :class:`EvalProtocol` or a name in :data:`PROTOCOLS`) to ``log``.

  De-duplicates if asked, splits with the protocol's tie order, and builds the queries: with
  ``exclude="known"`` validation queries know the training items and test queries the training +
  validation items; with ``exclude="none"`` no item is known (nothing is excluded from full
  ranking, sampled negatives are drawn from all items but the positive).

  Raises:
    ValueError: for a protocol whose split is a stream (``"prequential"``): use
      :meth:`EvalProtocol.split_log`.
  """
  protocol = get(protocol) if isinstance(protocol, str) else protocol
  if protocol.split == "prequential":
    raise ValueError(f"prepare: protocol {protocol.name!r} is a prequential stream, evaluated "
                     f"test-then-train by its consumer; use protocol.split_log(log)")
  log = protocol.apply_timestamps(log)
  if protocol.deduplicate:
    log = preprocess.deduplicate(log, keep="first")
  sp = protocol.replace(deduplicate=False, timestamps="exact").split_log(log)
  known = protocol.exclude == "known"
  # A split may give test-time input that is never trained on (new users' earlier rows).
  context = [sp.info["test_context"]] if "test_context" in sp.info else []
  grouped = protocol.group_by_user
  return PreparedData(protocol=protocol, log=log, split=sp,
                      valid_queries=Queries.from_log(sp.valid, [sp.train] if known else [],
                                                     group_by_user=grouped),
                      test_queries=Queries.from_log(sp.test, [sp.train, sp.valid] + context
                                                    if known else [], group_by_user=grouped))


PROTOCOLS: dict[str, EvalProtocol] = {p.name: p for p in (
    EvalProtocol("leave-last-out", "leave_last_out", deduplicate=True, exclude="known",
                 num_negatives=99, reference="TP (paper 001, Sec. 4.1: the most recent item of "
                 "each user is evaluated); SASRec-style 99 sampled negatives + full ranking"),
    EvalProtocol("user-holdout", "user_holdout", {"new_fraction": 0.2}, deduplicate=True,
                 exclude="known", num_negatives=99,
                 reference="TP (paper 001, Sec. 4.1: 80% existing users, 20% new users)"),
    EvalProtocol("tp-user-holdout", "user_holdout_last",
                 {"new_fraction": 0.2, "valid_item": True, "min_item_count": 5, "min_user_count": 10},
                 deduplicate=True, exclude="known", num_negatives=100,
                 reference="TP (paper 001, Sec. 4.1: items < 5 then users < 10 removed, 80% existing / "
                 "20% new users, the most recent item evaluated; HR@10, NDCG@10)"),
    EvalProtocol("context-holdout", "context_holdout",
                 {"valid_fraction": 0.1, "test_fraction": 0.1, "min_interactions": 16},
                 deduplicate=True, exclude="known", num_negatives=None,
                 reference="tree two-stage (paper 004, Appendix D.2: 10%/10% validation/test "
                 "users, first half context, rest ground truth; users with > 15 items)"),
    EvalProtocol("2ts-chronological", "chronological", {"ratios": (0.7, 0.1, 0.2)},
                 deduplicate=False, exclude="none", num_negatives=499, negatives="uniform",
                 reference="2TS (paper 000, Sec. 5: sorted by timestamp, 70/10/20; each "
                 "interaction ranked against 499 negatives sampled from all items)"),
    EvalProtocol("2ts-chronological-filtered", "chronological", {"ratios": (0.7, 0.1, 0.2)},
                 deduplicate=False, exclude="known", num_negatives=499, negatives="uniform",
                 reference="2TS split and 499 negatives (paper 000, Sec. 5) with the user's earlier "
                 "items excluded from the candidates (repeats kept as queries)"),
    EvalProtocol("chronological", "chronological", {"ratios": (0.7, 0.1, 0.2)},
                 deduplicate=False, exclude="known", num_negatives=99,
                 reference="2TS split (paper 000, Sec. 5) with jaxrec's filtered evaluation"),
    EvalProtocol("recbole-random-811", "recbole_ratio",
                 {"ratios": (0.8, 0.1, 0.1), "order": "RO", "group_by": "user", "seed": 0},
                 deduplicate=False, exclude="known", num_negatives=None, group_by_user=True,
                 timestamps="minmax-float32",
                 reference="RecBole 1.2.1 general models (properties/overall.yaml eval_args: RS "
                 "[0.8,0.1,0.1], group_by user, order RO, mode full; Dataset.split_by_ratio, "
                 "FullSortEvalDataLoader)"),
    EvalProtocol("recbole-time-811", "recbole_ratio",
                 {"ratios": (0.8, 0.1, 0.1), "order": "TO", "group_by": "user", "seed": 0},
                 deduplicate=False, exclude="known", num_negatives=None, group_by_user=True,
                 timestamps="minmax-float32",
                 reference="RecBole 1.2.1 RS [0.8,0.1,0.1] by user with order TO (Dataset.build "
                 "sorts by timestamp, stable; split_by_ratio; FullSortEvalDataLoader)"),
    EvalProtocol("recbole-leave-one-out", "recbole_leave_one_out", {"mode": "valid_and_test"},
                 deduplicate=False, exclude="none", num_negatives=None, max_history=50,
                 timestamps="minmax-float32",
                 reference="RecBole 1.2.1 sequential models (quick_start_config/sequential.yaml: "
                 "LS valid_and_test, order TO, mode full; SequentialDataset.data_augmentation, "
                 "MAX_ITEM_LIST_LENGTH 50; Dataset.leave_one_out)"),
    EvalProtocol("prequential", "prequential", {"offline": 0.95, "valid": 0.005, "test": 0.045},
                 deduplicate=False, num_negatives=None, full_ranking=False,
                 reference="MeLON (paper 002, Experimental setting: 95% / 0.5% / 4.5%)"),
)}

# The named protocol behind each ``--split`` of the experiment binaries (``experiments.common``).
FOR_SPLIT = {"leave_last_out": "leave-last-out", "user_holdout": "user-holdout",
             "user_holdout_last": "tp-user-holdout",
             "context_holdout": "context-holdout", "chronological": "chronological",
             "prequential": "prequential"}


def get(name: str) -> EvalProtocol:
  """The protocol called ``name`` in :data:`PROTOCOLS`."""
  if name not in PROTOCOLS:
    raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
  return PROTOCOLS[name]


def for_split(split: str) -> EvalProtocol:
  """The named protocol the binaries use for ``--split=split`` (:data:`FOR_SPLIT`)."""
  if split not in FOR_SPLIT:
    raise ValueError(f"no protocol for split {split!r}; known: {sorted(FOR_SPLIT)}")
  return get(FOR_SPLIT[split])
