"""TP's training data (paper 001, Sec. 3.1): every user is a task, and meta-step batches ``[C, k, S]``.

A user's task ``T_u`` holds every length-``L`` window of the user's training sequence with its next item
(rows with at least one earlier item; the first ``L - 1`` windows are left-padded, as the encoders'
masks allow). One outer step consumes ``C`` chains of ``k`` inner mini-batches, each mini-batch ``S``
subsequences of *one* user (Algorithm 1: "select a user ... sample a mini-batch from its task"):

* ``task_sampling="uniform"``: an epoch visits every training user once (in a random order), with up
  to ``S`` random subsequences (:func:`jaxrec.data.samplers.per_user_task_batches`);
* ``task_sampling="all"``: every subsequence once per epoch; each user's subsequences are shuffled and
  cut into mini-batches of ``S`` (a user with ``n`` subsequences is ``ceil(n / S)`` tasks), so an epoch is
  as many gradient evaluations as a plain epoch.

Mini-batches are shuffled and laid out as ``[steps, C, k]``; the last step is padded with empty
(masked) tasks. Negatives are drawn on the host, excluding the user's training items, from
``np.random.default_rng([seed, epoch])`` (data order and negatives depend only on seed and epoch, so
resumption is exact). Each subsequence carries its user's head label (:func:`head_users`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from jaxrec.data import samplers
from jaxrec.data.log import DataError, InteractionLog
from jaxrec.eval import segments


def head_users(train: InteractionLog, head_fraction: float = 0.2) -> np.ndarray:
  """bool ``[num_users]``: the ``ceil(head_fraction * U)`` training users with the most interactions
  (Sec. 4.1, "20% users with the most interactions as head users"); ties by the smaller user index
  (:func:`jaxrec.eval.segments.head_tail`, the same rule as the evaluation's breakdown)."""
  labels = segments.head_tail(train.user_counts(), np.arange(train.num_users), head_fraction)
  return labels == "head"


@dataclasses.dataclass(frozen=True)
class TaskData:
  """Host arrays the epoch batches are cut from (built once per training log)."""

  train: InteractionLog
  windows: samplers.Windows
  rows: np.ndarray            # int64 [R] window rows with >= 1 earlier item
  known: tuple                # training CSR (negatives exclude these)
  head: np.ndarray            # bool [num_users]
  history_len: int

  @property
  def num_items(self) -> int:
    return self.train.num_items

  @property
  def users(self) -> np.ndarray:
    """Users with at least one subsequence (the tasks)."""
    return np.unique(self.windows.user[self.rows])


def prepare(train: InteractionLog, history_len: int, head_fraction: float = 0.2) -> TaskData:
  """Windows, training CSR and head labels of ``train``."""
  win = samplers.last_windows(train, history_len)
  rows = np.flatnonzero(win.mask.any(axis=1))
  if rows.size == 0:
    raise DataError(f"{train.name}: TP needs users with at least 2 training interactions")
  return TaskData(train=train, windows=win, rows=rows, known=train.user_item_csr(),
                  head=head_users(train, head_fraction), history_len=history_len)


def _task_rows(rng: np.random.Generator, data: TaskData, support: int) -> np.ndarray:
  """int64 ``[T, S]`` window rows of every task of ``"all"`` sampling (-1 padding), in a random order."""
  rows = data.rows
  user = data.windows.user[rows]
  order = np.lexsort((rng.random(rows.size), user))
  rows, user = rows[order], user[order]
  counts = np.bincount(user, minlength=data.train.num_users)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rank = np.arange(rows.size) - starts[user]
  chunk = rank // support
  per_user = -(-counts // support)
  task_start = np.concatenate([[0], np.cumsum(per_user)[:-1]])
  task = task_start[user] + chunk
  table = np.full((int(per_user.sum()), support), -1, np.int64)
  table[task, rank % support] = rows
  return table[rng.permutation(table.shape[0])]


def _uniform_batches(rng, data: TaskData, support: int):
  """One task per user (per_user_task_batches), as ``{name: [T, S, ...]}`` with ``support_mask``."""
  b = next(samplers.per_user_task_batches(rng, data.train, data.history_len,
                                          batch_users=max(1, data.users.size), num_support=support,
                                          users=data.users, min_history=1))
  return {"user": np.repeat(b["user"][:, None], support, axis=1), "history": b["history"],
          "history_mask": b["history_mask"], "positive": b["target"], "mask": b["support_mask"]}


def _all_batches(rng, data: TaskData, support: int):
  """Every subsequence once: ``{name: [T, S, ...]}``."""
  table = _task_rows(rng, data, support)
  mask = table >= 0
  safe = np.where(mask, table, 0)
  w = data.windows
  return {"user": np.where(mask, w.user[safe], 0).astype(np.int32),
          "history": np.where(mask[..., None], w.history[safe], 0).astype(np.int32),
          "history_mask": w.mask[safe] & mask[..., None],
          "positive": np.where(mask, w.target[safe], 0).astype(np.int32), "mask": mask}


def num_tasks(data: TaskData, support: int, sampling: str) -> int:
  """Tasks (inner mini-batches) per epoch."""
  if sampling == "uniform":
    return int(data.users.size)
  counts = np.bincount(data.windows.user[data.rows], minlength=data.train.num_users)
  return int((-(-counts // support)).sum())


def num_subsequences(data: TaskData, support: int, sampling: str) -> int:
  """Real subsequences (targets) per epoch: ``sum_u min(n_u, S)`` (uniform) or every window (all)."""
  if sampling == "all":
    return int(data.rows.size)
  counts = np.bincount(data.windows.user[data.rows], minlength=data.train.num_users)
  return int(np.minimum(counts, support).sum())


def steps_per_epoch(data: TaskData, num_chains: int, k: int, support: int, sampling: str) -> int:
  """Outer steps per epoch: ``ceil(tasks / (C k))``."""
  return -(-num_tasks(data, support, sampling) // (num_chains * k))


def epoch_batches(data: TaskData, *, num_chains: int, k: int, support: int, num_negatives: int,
                  sampling: str, seed: int, epoch: int) -> Iterator[dict]:
  """The epoch's meta-step batches, each ``{name: [C, k, S, ...]}`` plus ``task_mask [C, k]``.

  Keys: ``user`` ``[C, k, S]``, ``history``/``history_mask`` ``[C, k, S, L]``, ``positive`` ``[C, k, S]``,
  ``negatives`` ``[C, k, S, N]``, ``mask`` ``[C, k, S]`` (real subsequences), ``head`` ``[C, k, S]``,
  ``task_mask`` ``[C, k]`` and ``chain_mask`` ``[C]`` (chains with at least one real task).
  """
  rng = np.random.default_rng([seed, epoch])
  if sampling == "uniform":
    tasks = _uniform_batches(rng, data, support)  # users already in a random order
  elif sampling == "all":
    tasks = _all_batches(rng, data, support)
  else:
    raise ValueError(f"unknown task_sampling {sampling!r}")
  mask = tasks["mask"]
  neg = np.zeros(mask.shape + (num_negatives,), np.int32)
  neg[mask] = samplers.sample_negatives(rng, tasks["user"][mask], num_negatives, data.num_items, data.known)
  tasks["negatives"] = neg
  tasks["head"] = data.head[tasks["user"]] & mask
  per_step = num_chains * k
  total = mask.shape[0]
  for lo in range(0, total, per_step):
    chunk = {name: v[lo:lo + per_step] for name, v in tasks.items()}
    n = chunk["mask"].shape[0]
    if n < per_step:
      chunk = {name: np.concatenate([v, np.zeros((per_step - n,) + v.shape[1:], v.dtype)])
               for name, v in chunk.items()}
    out = {name: v.reshape((num_chains, k) + v.shape[1:]) for name, v in chunk.items()}
    out["task_mask"] = out["mask"].any(axis=-1)
    out["chain_mask"] = out["task_mask"].any(axis=-1)
    yield out
