"""Tests for jaxrec.train.fit: all-position sequence examples, their negatives, and fitting end to end."""

import dataclasses

import numpy as np
import pytest

from experiments import common
from jaxrec.data import samplers
from jaxrec.data.log import InteractionLog
from jaxrec.eval import protocols
from jaxrec.models import registry
from jaxrec.train import fit as fit_lib

L = 4


def _log(seed=0):
  """Users with 0, 1, 2, L, L + 1, 2L + 1 and 3L + 2 rows; ties in time; rows shuffled.

  Items are distinct within a user, so (user, item) names a row.
  """
  rng = np.random.default_rng(seed)
  counts = [0, 1, 2, L, L + 1, 2 * L + 1, 3 * L + 2]
  user = np.repeat(np.arange(len(counts)), counts)
  item = np.concatenate([rng.permutation(40)[:c] for c in counts])
  timestamp = rng.integers(0, 6, user.size)  # many ties: broken by input row order
  perm = rng.permutation(user.size)
  return InteractionLog.from_arrays(user[perm], item[perm], timestamp[perm], num_users=len(counts),
                                    num_items=40)


def _rank(log):
  """{(user, item): position in the user's time order (ties by row order)}."""
  order = np.lexsort((np.arange(len(log)), log.timestamp, log.user))
  out, seen = {}, {}
  for r in order:
    u = int(log.user[r])
    out[(u, int(log.item[r]))] = seen.get(u, 0)
    seen[u] = seen.get(u, 0) + 1
  return out


def test_sequence_chunks_cover_each_target_once_causally():
  log = _log()
  ex = fit_lib.sequence_chunks(log, L)
  rank = _rank(log)
  m = ex["history_mask"]
  np.testing.assert_array_equal(ex["target_mask"], m)
  assert not np.any(m[:, 1:] < m[:, :-1])  # left padding only
  assert np.all(ex["history"][~m] == 0) and np.all(ex["targets"][~m] == 0)
  seen = []
  for c in range(m.shape[0]):
    u = int(ex["user"][c])
    cols = np.flatnonzero(m[c])
    tr = [rank[(u, int(ex["targets"][c, t]))] for t in cols]  # KeyError: an item of another user
    hr = [rank[(u, int(ex["history"][c, t]))] for t in cols]
    np.testing.assert_array_equal(np.array(tr), np.array(hr) + 1)  # input at t = the target's previous item
    assert np.all(np.diff(tr) == 1)  # positions < t hold earlier items only
    seen += [(u, r) for r in tr]
  counts = log.user_counts()
  expected = sorted((u, r) for u in range(log.num_users) for r in range(1, counts[u]))
  assert sorted(seen) == expected and len(seen) == len(set(seen))  # every target exactly once
  # The most recent chunk of a user is full when it can be, and ends at the user's last item.
  for u in np.flatnonzero(counts >= 2):
    rows = np.flatnonzero(ex["user"] == u)
    assert rows.size == -(-(counts[u] - 1) // L)
    latest = rows[0]
    assert rank[(int(u), int(ex["targets"][latest, -1]))] == counts[u] - 1
    assert m[latest].all() == (counts[u] >= L + 1)


def test_sequence_chunk_history_is_the_window_suffix():
  """At each position the chunk's history is the tail of the row's last-L window (never anything else)."""
  log = _log(1)
  ex = fit_lib.sequence_chunks(log, L)
  win = samplers.last_windows(log, L)
  row_of = {(int(u), int(i)): r for r, (u, i) in enumerate(zip(log.user, log.item))}
  for c, t in zip(*np.nonzero(ex["target_mask"])):
    r = row_of[(int(ex["user"][c]), int(ex["targets"][c, t]))]
    k = int(ex["history_mask"][c, :t + 1].sum())
    np.testing.assert_array_equal(ex["history"][c, t + 1 - k:t + 1], win.history[r, L - k:])
    assert win.mask[r, L - k:].all()


def test_epoch_negatives_per_position_exclude_known_positives():
  log = _log(2)
  ex = fit_lib.sequence_chunks(log, L)
  known = log.user_item_csr()
  config = fit_lib.FitConfig(batch_size=3, num_negatives=5)
  batches = list(fit_lib.epoch_batches(ex, known, log.num_items, config, seed=0, epoch=1))
  again = list(fit_lib.epoch_batches(ex, known, log.num_items, config, seed=0, epoch=1))
  np.testing.assert_array_equal(batches[0]["negatives"], again[0]["negatives"])
  indptr, items = known
  for b in batches:
    assert b["negatives"].shape == (3, L, 5) and b["targets"].shape == (3, L)
    for j in range(3):
      u = b["user"][j]
      neg = b["negatives"][j][b["target_mask"][j] & b["mask"][j]]
      assert not np.isin(neg, items[indptr[u]:indptr[u + 1]]).any()
      assert np.all(b["negatives"][j][~b["target_mask"][j]] == 0)


def test_all_positions_choice():
  log = _log()
  gru = registry.get("gru4rec")
  assert fit_lib.uses_all_positions(gru, fit_lib.FitConfig())
  assert not fit_lib.uses_all_positions(gru, fit_lib.FitConfig(all_positions=False))
  assert "positive" in fit_lib.training_examples(gru, log, L, all_positions=False)
  assert "targets" in fit_lib.training_examples(gru, log, L)
  with pytest.raises(ValueError, match="all positions"):
    fit_lib.uses_all_positions(registry.get("caser"), fit_lib.FitConfig(all_positions=True))


TINY = {"gru4rec": {"dim": 16, "hidden": 16, "dropout": 0.0},
        "sasrec": {"dim": 16, "num_blocks": 1, "num_heads": 1, "dropout": 0.1}}


@pytest.fixture(scope="module")
def prepared():
  return common.prepare("synthetic:tiny", "leave_last_out")


@pytest.mark.parametrize("model", ["gru4rec", "sasrec"])
def test_fit_all_positions_reduces_loss_and_scores(prepared, model):
  sp = prepared.split
  config = fit_lib.FitConfig(epochs=6, batch_size=16, num_negatives=8, history_len=8, learning_rate=1e-2,
                             valid_negatives=20, patience=None)
  spec = registry.get(model)
  logs = [sp.train, sp.valid, sp.test]
  valid_q = dataclasses.replace(prepared.valid_queries,
                                features=fit_lib.query_features(spec, logs, 1, config.history_len))
  out = fit_lib.fit(model, sp.train, valid_q, config, hparams=TINY[model])
  losses = [r["loss"] for r in out.history if r["kind"] == "train"]
  assert len(losses) >= 6 and losses[-1] < 0.8 * losses[0], losses
  protocol = protocols.Sampled(num_negatives=20, seed=1).draw(valid_q, sp.train.num_items)
  res = protocols.evaluate(out.score_fn, out.params, valid_q, protocol, sp.train.num_items, ks=(10,))
  first4 = {k: v[:4] for k, v in valid_q.features.items()}
  scores = out.score_fn(out.params, first4, np.arange(7, dtype=np.int32))
  assert scores.shape == (4, 7) and np.isfinite(scores).all()
  # Random scores give NDCG@10 ~0.26 over 21 candidates (ties count against the positive: lower).
  assert res.summary["NDCG@10"] > 0.35, res.summary
