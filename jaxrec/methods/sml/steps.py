"""SML's two steps as pure functions over parameter pytrees (paper 003, Sec. 3.3, Eq. 8-11, 13).

Tables are ``{"user": [U, d], "item": [I, d]}`` (MF's two parameter groups, Sec. 3.4); ``theta`` is
``{"user": Theta_u, "item": Theta_i}`` (one :mod:`~jaxrec.methods.sml.transfer` network per group). A
batch is ``{"user" [B], "positive" [B], "negatives" [B, N], "mask" [B]}``; the MF score is the plain dot
product ``p_u . q_i`` (Eq. 12) and the loss Eq. 13's log loss (averaged over real rows, not summed).

* :func:`step1` (Eq. 8-9): one lazy-Adam step on ``W_hat`` of
  ``L_0(f_Theta(W_prev, W_hat) | batch) + lambda_1 ||W_hat_batch||^2``, ``Theta`` and ``W_prev``
  constants. Only the rows the batch touches (its users, positives and negatives) move, and only their
  Adam moments: rows that a period never touches keep ``W_hat = W_prev`` exactly. ``direct=True``
  (SML-FP) scores ``W_hat`` itself instead of the transfer output.
* :func:`step2` (Eq. 10-11): one Adam step on ``Theta`` of ``L_0(f_Theta(W_prev, W_hat) | batch)``,
  ``W_prev`` *and* ``W_hat`` constants: the first-order approximation of the paper (``W_hat_t`` depends
  on ``Theta`` through Step 1, a dependence that is dropped, as in first-order MAML); ``lambda_2`` is the
  optimizer's coupled weight decay.
* :func:`epochs`: shuffled epochs of either step over a padded block (``lax.scan``; a mini-batch with
  no real row is skipped), with uniform negatives drawn in the step.

Departures: Eq. 8's L2 is over the batch's rows of ``W_hat`` (as the authors' code), not the whole
table; negatives are uniform over all items (an item the user has may be drawn, as in
:mod:`jaxrec.stream.strategies`); Step 1's Adam is lazy (PyTorch's dense Adam in the authors' code
moves every row with its momentum).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrec.methods.sml import transfer
from jaxrec.models import losses

Tables = dict  # {"user": [U, d], "item": [I, d]}


class LazyAdamState(NamedTuple):
  """Per-row Adam moments of the tables and the number of steps taken."""

  mu: Tables
  nu: Tables
  count: jax.Array


def lazy_adam_init(tables: Tables) -> LazyAdamState:
  zeros = jax.tree.map(jnp.zeros_like, tables)
  return LazyAdamState(mu=zeros, nu=jax.tree.map(jnp.zeros_like, tables), count=jnp.zeros((), jnp.int32))


def lazy_adam(tables: Tables, grads: Tables, state: LazyAdamState, touched: dict, lr: float,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
  """Adam (Kingma & Ba 2015) on the ``touched`` rows only (``touched[k]``: bool ``[rows]``)."""
  count = state.count + 1
  c1 = 1.0 - b1 ** count.astype(jnp.float32)
  c2 = 1.0 - b2 ** count.astype(jnp.float32)
  new_t, new_mu, new_nu = {}, {}, {}
  for k in tables:
    m = b1 * state.mu[k] + (1.0 - b1) * grads[k]
    v = b2 * state.nu[k] + (1.0 - b2) * grads[k] ** 2
    w = tables[k] - lr * (m / c1) / (jnp.sqrt(v / c2) + eps)
    rows = touched[k][:, None]
    new_t[k] = jnp.where(rows, w, tables[k])
    new_mu[k] = jnp.where(rows, m, state.mu[k])
    new_nu[k] = jnp.where(rows, v, state.nu[k])
  return new_t, LazyAdamState(mu=new_mu, nu=new_nu, count=count)


def _keep_untouched(out: jax.Array, prev_rows: jax.Array, hat_rows: jax.Array) -> jax.Array:
  """``out`` where Step 1 moved the row (``hat != prev``), ``prev`` where it did not."""
  moved = jnp.any(hat_rows != prev_rows, axis=-1, keepdims=True)
  return jnp.where(moved, out, prev_rows)


def group_rows(theta: dict, prev: Tables, hat: Tables, group: str, idx: jax.Array,
               tconfig: transfer.TransferConfig, direct: bool = False,
               transfer_untouched: bool = True) -> jax.Array:
  """Rows ``idx`` (any shape) of group ``group`` of the model ``f_Theta(prev, hat)`` (or ``hat``);
  ``transfer_untouched=False``: rows that Step 1 never moved stay ``prev``."""
  flat = idx.reshape(-1)
  if direct:
    out = hat[group][flat]
  else:
    p, h = prev[group][flat], hat[group][flat]
    out = transfer.apply_rows(theta[group], p, h, tconfig)
    if not transfer_untouched:
      out = _keep_untouched(out, p, h)
  return out.reshape(idx.shape + (out.shape[-1],))


def mf_log_loss(theta: dict, prev: Tables, hat: Tables, batch: dict, tconfig: transfer.TransferConfig,
                direct: bool = False, transfer_untouched: bool = True) -> jax.Array:
  """Eq. 13 (averaged over real rows) of the model ``f_Theta(prev, hat)`` on ``batch``."""
  rows = lambda g, idx: group_rows(theta, prev, hat, g, idx, tconfig, direct, transfer_untouched)  # noqa: E731
  u = rows("user", batch["user"])
  i = rows("item", batch["positive"])
  j = rows("item", batch["negatives"])
  pos = jnp.sum(u * i, -1)
  neg = jnp.einsum("bd,bnd->bn", u, j)
  return losses.log_loss(pos, neg, batch["mask"])


def step1_loss(hat: Tables, prev: Tables, theta: dict, batch: dict, tconfig: transfer.TransferConfig,
               l2: float, direct: bool = False) -> jax.Array:
  """Eq. 8: ``L_0(f_Theta(prev, hat) | batch) + l2 * mean_rows ||hat rows||^2``."""
  value = mf_log_loss(theta, prev, hat, batch, tconfig, direct)
  if l2:
    sq = (jnp.sum(hat["user"][batch["user"]] ** 2, -1) + jnp.sum(hat["item"][batch["positive"]] ** 2, -1)
          + jnp.sum(hat["item"][batch["negatives"]] ** 2, (-2, -1)))
    value = value + l2 * losses.masked_mean(sq, batch["mask"])
  return value


def touched_rows(batch: dict, num_users: int, num_items: int) -> dict:
  """bool ``{"user": [U], "item": [I]}``: rows a batch's real examples read."""
  m = batch["mask"]
  users = jnp.zeros((num_users,), bool).at[batch["user"]].max(m)
  items = jnp.zeros((num_items,), bool).at[batch["positive"]].max(m)
  items = items.at[batch["negatives"]].max(jnp.broadcast_to(m[:, None], batch["negatives"].shape))
  return {"user": users, "item": items}


def step1(hat: Tables, opt: LazyAdamState, prev: Tables, theta: dict, batch: dict, *,
          tconfig: transfer.TransferConfig, lr: float, l2: float, direct: bool = False):
  """One Step-1 update of ``hat`` (Eq. 9 then lazy Adam); returns ``(hat, opt, loss)``."""
  loss, grads = jax.value_and_grad(step1_loss)(hat, prev, theta, batch, tconfig, l2, direct)
  touched = touched_rows(batch, hat["user"].shape[0], hat["item"].shape[0])
  hat, opt = lazy_adam(hat, grads, opt, touched, lr)
  return hat, opt, loss


def step2_loss(theta: dict, prev: Tables, hat: Tables, batch: dict, tconfig: transfer.TransferConfig,
               transfer_untouched: bool = True) -> jax.Array:
  """Eq. 10 without ``lambda_2`` (the optimizer's weight decay); ``prev`` and ``hat`` are constants."""
  prev, hat = jax.lax.stop_gradient((prev, hat))
  return mf_log_loss(theta, prev, hat, batch, tconfig, transfer_untouched=transfer_untouched)


def step2(theta: dict, opt: optax.OptState, prev: Tables, hat: Tables, batch: dict, *,
          tconfig: transfer.TransferConfig, tx: optax.GradientTransformation,
          transfer_untouched: bool = True):
  """One Step-2 update of ``theta`` (Eq. 11, first order); returns ``(theta, opt, loss)``."""
  loss, grads = jax.value_and_grad(step2_loss)(theta, prev, hat, batch, tconfig, transfer_untouched)
  updates, opt = tx.update(grads, opt, theta)
  return optax.apply_updates(theta, updates), opt, loss


def transfer_tables(theta: dict, prev: Tables, hat: Tables, tconfig: transfer.TransferConfig,
                    transfer_untouched: bool = True) -> Tables:
  """``W = f_Theta(W_prev, W_hat)`` over every row of both groups (Eq. 3, Algorithm 1 line 11);
  ``transfer_untouched=False`` keeps ``W_prev`` on rows that Step 1 never moved."""
  out = {k: transfer.apply_rows(theta[k], prev[k], hat[k], tconfig) for k in prev}
  if not transfer_untouched:
    out = {k: _keep_untouched(out[k], prev[k], hat[k]) for k in out}
  return out


def epochs(step: Callable, carry, rows: dict, rng: jax.Array, num_epochs: int, batch_size: int,
           num_items: int, num_negatives: int):
  """``num_epochs`` shuffled epochs of ``step(carry, batch) -> (carry, loss)`` over ``rows``.

  ``rows``: ``{"user" [P], "positive" [P], "mask" [P]}``, padded; they are padded further to a multiple
  of ``batch_size``. Real rows come first in each epoch's random order, so only the last real batch is
  partial; batches without real rows are skipped (``lax.cond``). Returns ``(carry, mean loss over real
  batches)``.
  """
  p = rows["mask"].shape[0]
  nb = -(-p // batch_size)
  pad = nb * batch_size - p
  rows = {k: jnp.concatenate([rows[k], jnp.zeros((pad,), rows[k].dtype)])
          for k in ("user", "positive", "mask")}

  def one_epoch(carry, e):
    perm_key, neg_key = jax.random.split(jax.random.fold_in(rng, e))
    order = jnp.argsort(jnp.where(rows["mask"], jax.random.uniform(perm_key, (p + pad,)), 2.0))
    batches = {k: v[order].reshape(nb, batch_size) for k, v in rows.items()}
    batches["negatives"] = jax.random.randint(neg_key, (nb, batch_size, num_negatives), 0, num_items,
                                              jnp.int32)

    def body(carry, batch):
      real = batch["mask"].any()
      carry, loss = jax.lax.cond(real, step, lambda c, b: (c, jnp.zeros((), jnp.float32)), carry, batch)
      return carry, (loss, real)

    return jax.lax.scan(body, carry, batches)

  carry, (loss, real) = jax.lax.scan(one_epoch, carry, jnp.arange(num_epochs))
  return carry, jnp.sum(loss) / jnp.maximum(jnp.sum(real), 1)
