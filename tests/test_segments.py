"""Tests for jaxrec.eval.segments."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrec.eval import metrics, segments


def test_activity_buckets_labels():
  counts = np.array([0, 4, 5, 9, 10, 99, 100, 5000])
  labels = segments.activity_buckets(counts, np.arange(8))
  assert labels.tolist() == ["[0,5)", "[0,5)", "[5,10)", "[5,10)", "[10,20)", "[50,100)", "[100,inf)",
                             "[100,inf)"]
  with pytest.raises(ValueError, match="increasing"):
    segments.activity_buckets(counts, np.arange(8), edges=(0, 5, 5))
  with pytest.raises(ValueError, match="outside"):
    segments.activity_buckets(counts, np.arange(8), edges=(1, 10))


def test_head_tail_exact_fraction_with_ties():
  counts = np.array([3, 3, 3, 3, 0, 1, 1, 1, 1, 1, 9])  # 10 active users -> head of 2
  labels = segments.head_tail(counts, np.arange(11), head_fraction=0.2)
  assert labels.tolist().count("head") == 2
  assert labels[10] == "head" and labels[0] == "head" and labels[1] == "tail" and labels[4] == "tail"


def test_existing_new_mask_and_ids():
  users = np.array([0, 1, 2, 2])
  a = segments.existing_new(users, np.array([False, True, False]))
  b = segments.existing_new(users, np.array([1]), num_users=3)
  assert a.tolist() == b.tolist() == ["existing", "new", "existing", "existing"]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 1000))
def test_breakdown_counts_add_up_and_means_match(seed):
  rng = np.random.default_rng(seed)
  q = int(rng.integers(1, 60))
  counts = rng.integers(0, 200, 30)
  users = rng.integers(0, 30, q)
  ranks = rng.integers(1, 50, q)
  per_query = metrics.metrics_from_ranks(ranks, 50, ks=(10,))
  labels = segments.activity_buckets(counts, users)
  out = segments.breakdown(per_query, labels)
  assert sum(v["count"] for v in out.values()) == q
  total = sum(v["count"] * v["HR@10"] for v in out.values())
  assert total == pytest.approx(per_query["HR@10"].sum())
  for label, v in out.items():
    sel = labels == label
    assert v["MRR"] == pytest.approx(np.mean(1.0 / ranks[sel]))
  nums = [float(k[1:].split(",")[0]) for k in out]
  assert nums == sorted(nums)


def test_breakdown_shape_mismatch_raises():
  with pytest.raises(ValueError, match="labels"):
    segments.breakdown({"MRR": np.ones(3)}, np.array(["a", "b"]))
