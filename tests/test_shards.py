"""jaxrec.data.shards: shards written once, memory-mapped, an epoch streams every row exactly once."""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile
import threading
import time

import numpy as np
from absl.testing import absltest

from jaxrec.data import shards, synthetic
from jaxrec.data.log import DataError, InteractionLog, concat_logs

# tiny (200 users, ~3.4k interactions) cut into 6 chunks of 37 users: shards of unequal sizes.
CONFIG = dataclasses.replace(synthetic.get_config("tiny"), chunk_users=37, ratings=True)


def _chunks():
  return synthetic.generate_chunks(CONFIG, seed=3)


def _rows(batches, fields):
  """Multiset of the unmasked rows of ``batches`` as tuples of ``fields``."""
  out = collections.Counter()
  for b in batches:
    m = b["mask"]
    out.update(zip(*(b[f][m].tolist() for f in fields)))
  return out


class ShardsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = os.path.join(tempfile.mkdtemp(), "shards")
    self.log = shards.write(self.dir, _chunks())
    self.memory = concat_logs(list(_chunks()))

  def test_written_shards_are_the_log_and_memory_mapped(self):
    self.assertEqual(self.log.num_shards, 6)
    self.assertEqual(self.log.num_rows, self.memory.user.shape[0])
    self.assertGreater(len(set(self.log.shard_rows)), 1)  # unequal shards
    self.assertIsInstance(self.log.column("item", 2), np.memmap)
    back = self.log.to_log()
    for c in ("user", "item", "timestamp", "rating"):
      np.testing.assert_array_equal(getattr(back, c), getattr(self.memory, c))
    np.testing.assert_array_equal(back.item_features, self.memory.item_features)
    self.assertEqual((back.num_users, back.num_items), (self.memory.num_users, self.memory.num_items))

  def test_streamed_epoch_sees_exactly_the_in_memory_rows(self):
    fields = {"user": "user", "positive": "item", "t": "timestamp"}
    want = collections.Counter(zip(self.memory.user.tolist(), self.memory.item.tolist(),
                                   self.memory.timestamp.tolist()))
    pairs = collections.Counter(zip(self.memory.user.tolist(), self.memory.item.tolist()))
    self.assertGreater(max(pairs.values()), 1)  # repeated (user, item) pairs: a multiset, not a set
    for batch_size, window in ((64, 2), (1000, 1), (5000, 3)):  # 5000 > rows: one padded batch
      batches = list(shards.epoch_batches(self.log, batch_size, seed=0, epoch=1, fields=fields,
                                          window=window))
      self.assertEqual(len(batches), shards.steps_per_epoch(self.log, batch_size))
      self.assertEqual(_rows(batches, ("user", "positive", "t")), want)
      self.assertEqual(_rows(batches, ("user", "positive")), pairs)
      for b in batches:
        self.assertEqual({k: v.shape for k, v in b.items()}, {k: (batch_size,) for k in (*fields, "mask")})
      self.assertTrue(all(b["mask"].all() for b in batches[:-1]))
      # The padding rows of the last batch are real rows (ids in range), masked out.
      last = batches[-1]
      self.assertTrue(np.all(last["user"] < self.log.num_users) and np.all(last["user"] >= 0))

  def _interleaved(self):
    """The tiny log in a shuffled arrival order with coarse timestamps (many ties in time) and some rows
    repeated, written as 5 consecutive row slices: every user's rows spread over several shards."""
    m, rng = self.memory, np.random.default_rng(0)
    idx = rng.permutation(m.user.shape[0])
    idx = np.concatenate([idx, idx[rng.integers(0, idx.shape[0], 300)]])  # exact duplicates
    log = InteractionLog(user=m.user[idx], item=m.item[idx], timestamp=m.timestamp[idx] // 50,
                         rating=m.rating[idx], num_users=m.num_users, num_items=m.num_items,
                         item_features=m.item_features, name="interleaved")
    cuts = np.linspace(0, idx.shape[0], 6).astype(int)
    chunks = [dataclasses.replace(log, **{c: getattr(log, c)[a:b] for c in ("user", "item", "timestamp",
                                                                             "rating")})
              for a, b in zip(cuts, cuts[1:])]
    return log, shards.write(os.path.join(tempfile.mkdtemp(), "interleaved"), chunks)

  def test_user_blocks_hold_whole_users_in_arrival_order(self):
    log, on_disk = self._interleaved()
    self.assertGreater(len(np.unique(np.asarray(on_disk.column("user", 0)))), 100)  # users spread out
    counts = shards.user_counts(on_disk)
    np.testing.assert_array_equal(counts, np.bincount(log.user, minlength=log.num_users))
    for max_rows in (1, 97, 1_000, 10**9):
      blocks = list(shards.user_blocks(on_disk, max_rows))
      self.assertEqual(len(blocks) == 1, max_rows == 10**9)
      seen = set()
      for b in blocks:
        users = np.unique(b.user)
        self.assertTrue(seen.isdisjoint(users.tolist()))
        seen.update(users.tolist())
        self.assertTrue(b.user.shape[0] <= max_rows or users.shape[0] == 1, max_rows)
        np.testing.assert_array_equal(np.bincount(b.user, minlength=log.num_users)[users], counts[users])
      # Concatenated and stably grouped by user, the blocks are the whole log stably grouped by user:
      # every row once, each user's rows in arrival order (what keeps ties in time as on the whole log).
      cat = concat_logs(blocks)
      for c in ("user", "item", "timestamp", "rating"):
        np.testing.assert_array_equal(getattr(cat, c)[np.argsort(cat.user, kind="stable")],
                                      getattr(log, c)[np.argsort(log.user, kind="stable")], c)
    with self.assertRaisesRegex(DataError, "max_rows must be >= 1"):
      next(shards.user_blocks(on_disk, 0))

  def test_order_is_a_function_of_seed_and_epoch(self):
    def order(seed, epoch):
      return np.concatenate([b["item"] for b in shards.epoch_batches(self.log, 100, seed=seed, epoch=epoch)])
    np.testing.assert_array_equal(order(0, 2), order(0, 2))
    self.assertFalse(np.array_equal(order(0, 2), order(0, 3)))
    self.assertFalse(np.array_equal(order(0, 2), order(1, 2)))
    # Shuffled across shards: the first batch mixes several users' chunks.
    first = next(shards.epoch_batches(self.log, 100, seed=0, epoch=0))
    self.assertGreater(len(np.unique(first["user"] // CONFIG.chunk_users)), 1)
    # The shards' order is shuffled too: with one shard per window, epochs start at different shards.
    starts = {int(next(shards.epoch_batches(self.log, 10, seed=0, epoch=e, window=1))["user"][0]
                  // CONFIG.chunk_users) for e in range(6)}
    self.assertGreater(len(starts), 1)

  def test_background_prefetch_is_the_same_stream_and_stops_when_closed(self):
    def items(prefetch):
      return [b["item"] for b in shards.epoch_batches(self.log, 64, seed=0, epoch=0, prefetch=prefetch)]
    for a, b in zip(items(0), items(3), strict=True):
      np.testing.assert_array_equal(a, b)
    before = threading.active_count()
    it = shards.epoch_batches(self.log, 8, seed=0, epoch=0, prefetch=2)
    next(it)
    it.close()  # a loop that stops early
    for _ in range(50):
      if threading.active_count() <= before:
        break
      time.sleep(0.05)
    self.assertLessEqual(threading.active_count(), before)

    def failing():
      yield 1
      raise OSError("disk gone")
    with self.assertRaisesRegex(OSError, "disk gone"):
      list(shards.background(failing(), 2))

  def test_written_once_and_unfinished_writes_redone(self):
    stamp = os.stat(os.path.join(self.dir, "user-00000.npy")).st_mtime_ns

    def never():
      raise AssertionError("chunks consumed although the shards exist")
      yield

    again = shards.write(self.dir, never())
    self.assertEqual(again, self.log)
    self.assertEqual(os.stat(os.path.join(self.dir, "user-00000.npy")).st_mtime_ns, stamp)
    os.remove(os.path.join(self.dir, shards.META))  # a killed write leaves no meta.json
    with self.assertRaisesRegex(DataError, "no finished shards"):
      shards.open_log(self.dir)
    self.assertEqual(shards.write(self.dir, _chunks()), self.log)
    # A directory with anything else in it is never cleared: one error, the user's file untouched.
    mine = os.path.join(self.dir, "notes.txt")
    with open(mine, "w") as f:
      f.write("a user's file\n")
    os.remove(os.path.join(self.dir, shards.META))
    with self.assertRaisesRegex(DataError, "not shards .*'notes.txt'"):
      shards.write(self.dir, _chunks())
    self.assertTrue(os.path.exists(mine))

  def test_bad_input_is_one_line(self):
    with self.assertRaisesRegex(DataError, "no column 'genre'"):
      self.log.column("genre", 0)
    with self.assertRaisesRegex(DataError, "must be >= 1"):
      next(shards.epoch_batches(self.log, 0, seed=0, epoch=0))
    other = dataclasses.replace(CONFIG, num_items=90)
    mixed = [next(_chunks()), next(synthetic.generate_chunks(other, seed=3))]
    with self.assertRaisesRegex(DataError, "shard 1: index spaces or columns differ"):
      shards.write(os.path.join(self.dir, "mixed"), mixed)


if __name__ == "__main__":
  absltest.main()
