"""Tests for jaxrec.models.losses against numpy references and finite differences."""

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax.test_util import check_grads

from jaxrec.models import losses


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _np_masked_mean(per_row, mask):
  m = mask.astype(np.float64)
  return (per_row * m).sum() / max(m.sum(), 1.0)


def _arrays(seed, b=4, n=3):
  rng = np.random.default_rng(seed)
  pos = rng.normal(size=b).astype(np.float32) * 3
  neg = rng.normal(size=(b, n)).astype(np.float32) * 3
  mask = rng.random(b) < 0.7
  return pos, neg, mask


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_bpr_matches_numpy(seed):
  pos, neg, mask = _arrays(seed)
  ref = _np_masked_mean(np.mean(-_np_log_sigmoid(pos[:, None] - neg), axis=1), mask)
  np.testing.assert_allclose(losses.bpr(pos, neg, mask), ref, rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_log_loss_matches_numpy(seed):
  pos, neg, mask = _arrays(seed)
  sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))
  per_example = np.concatenate([-np.log(sig(pos))[:, None], -np.log(1 - sig(neg))], axis=1)
  ref = _np_masked_mean(per_example.mean(axis=1), mask)
  np.testing.assert_allclose(losses.log_loss(pos, neg, mask), ref, rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_sampled_softmax_matches_numpy(seed, with_log_q):
  pos, neg, mask = _arrays(seed)
  scores = np.concatenate([pos[:, None], neg], axis=1)
  log_q = np.log(np.random.default_rng(seed + 1).uniform(0.01, 1.0, size=scores.shape)).astype(np.float32)
  logits = scores - log_q if with_log_q else scores
  p = np.exp(logits - logits.max(1, keepdims=True))
  p = p / p.sum(1, keepdims=True)
  ref = _np_masked_mean(-np.log(p[:, 0]), mask)
  out = losses.sampled_softmax(scores, mask, log_q if with_log_q else None)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_log_q_correction_changes_loss():
  scores = jnp.zeros((2, 3))
  log_q = jnp.log(jnp.array([[1.0, 0.5, 0.25]] * 2))
  # Uniform scores: without correction the loss is log 3; with it, logits 0, log 2, log 4.
  np.testing.assert_allclose(losses.sampled_softmax(scores), np.log(3.0), rtol=1e-6)
  np.testing.assert_allclose(losses.sampled_softmax(scores, log_q=log_q), np.log(7.0), rtol=1e-6)


def test_full_softmax_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 9)).astype(np.float32)
  targets = rng.integers(0, 9, size=5).astype(np.int32)
  mask = np.array([1, 1, 0, 1, 0], bool)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ref = _np_masked_mean(-logp[np.arange(5), targets], mask)
  np.testing.assert_allclose(losses.full_softmax(logits, targets, mask), ref, rtol=1e-5)
  chex.assert_shape(losses.full_softmax(logits, targets), ())


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_padded_rows_do_not_count(name):
  pos, neg, _ = _arrays(3)
  scores = jnp.concatenate([pos[:, None], neg], axis=1)
  mask = jnp.array([True, True, False, False])
  base = losses.candidate_loss(name, scores, mask)
  junk = scores.at[2:].set(1e3)
  np.testing.assert_allclose(losses.candidate_loss(name, junk, mask), base, rtol=1e-6)
  np.testing.assert_allclose(base, losses.candidate_loss(name, scores[:2]), rtol=1e-6)
  grad = jax.grad(lambda s: losses.candidate_loss(name, s, mask))(scores)
  np.testing.assert_array_equal(grad[2:], 0.0)
  assert np.all(np.abs(grad[:2]) > 0)


def test_all_masked_gives_zero_not_nan():
  pos, neg, _ = _arrays(1)
  out = losses.bpr(pos, neg, jnp.zeros(4, bool))
  assert float(out) == 0.0


def test_candidate_loss_dispatch_and_unknown():
  pos, neg, mask = _arrays(2)
  scores = jnp.concatenate([pos[:, None], neg], axis=1)
  np.testing.assert_allclose(losses.candidate_loss("bpr", scores, mask), losses.bpr(pos, neg, mask))
  np.testing.assert_allclose(losses.candidate_loss("log", scores, mask), losses.log_loss(pos, neg, mask))
  with pytest.raises(ValueError, match="unknown loss"):
    losses.candidate_loss("hinge", scores)


def test_large_scores_stay_finite():
  pos = jnp.array([-200.0, 200.0])
  neg = jnp.array([[200.0], [-200.0]])
  for value in (losses.bpr(pos, neg), losses.log_loss(pos, neg),
                losses.sampled_softmax(jnp.concatenate([pos[:, None], neg], 1))):
    assert np.isfinite(float(value))
  np.testing.assert_allclose(losses.bpr(pos, neg), 200.0, rtol=1e-5)  # mean(400, 0)


@pytest.mark.parametrize("name", ["bpr", "log", "softmax", "full"])
def test_gradients_match_finite_differences(name):
  pos, neg, mask = _arrays(7)
  scores = jnp.concatenate([pos[:, None], neg], axis=1) / 3
  mask = jnp.asarray(mask, jnp.float32)
  if name == "full":
    targets = jnp.array([0, 2, 1, 3])
    f = lambda s: losses.full_softmax(s, targets, mask)
  else:
    f = lambda s: losses.candidate_loss(name, s, mask)
  check_grads(f, (scores,), order=2, modes=["rev"], eps=1e-2, atol=2e-2, rtol=2e-2)


def test_bpr_gradient_sign():
  g_pos, g_neg = jax.grad(losses.bpr, argnums=(0, 1))(jnp.zeros(2), jnp.zeros((2, 3)))
  assert np.all(g_pos < 0) and np.all(g_neg > 0)  # raising pos / lowering neg lowers the loss
