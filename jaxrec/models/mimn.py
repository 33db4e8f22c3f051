"""MIMN (Pi et al. KDD 2019, "Practice on Long Sequential User Behavior Modeling for CTR Prediction").

A Multi-channel user Interest Memory Network: an NTM memory written once per behaviour, a Memory
Induction Unit on top of it, and an Embedding&MLP head that reads both with the candidate. Equations
follow Sec. 4.2 of the paper; where the paper is silent or differs, the authors' TensorFlow code
(github.com/UIC-Paper/MIMN, ``script/mimn.py`` ``MIMNCell`` and ``script/model.py`` ``Model_MIMN``) is
followed, with its defaults (``memory_size=4``, ``read_head_num = write_head_num = 1``,
``clip_value=20``, ``sharp_value=2``, ``shift_range=1``, ``mem_induction=1`` with top-1 channels,
``util_reg=1`` with weight 0.001; ``HIDDEN_SIZE=32``, memory width ``2 * EMBEDDING_DIM = 32``).

Per behaviour ``x_t`` (item embedding, ``dim = d``) with memory ``M_{t-1}`` ``[m, d]``:

* controller (a GRU as in the code, TF ``GRUCell`` equations, gate bias 1): ``h_t = GRU(h_{t-1},
  [x_t; r_{t-1}])``; its output and, with the utilisation regulariser, ``stop_grad(g_{t-1} / 400)``
  map (linearly, clipped to ``+-20``) to the read and write heads' parameters and the erase / add
  vectors (the code's ``o2p``);
* addressing (Sec. 4.2.1 "Memory Read", content-based): key ``k = tanh(.)``, strength
  ``beta = 2 (softplus(.) + 1)``, ``K(k, M(i)) = (cos(k, M_key(i)) + cos(k, M(i))) / 2`` with a learned
  key memory ``M_key = tanh(W_key)`` (the code; the paper writes ``cos(k, M(i))`` only),
  ``w(i) = softmax_i(beta K(k, M(i)))``; read vector ``r_t = sum_i w^r(i) M_{t-1}(i)``;
* write (Sec. 4.2.1 "Memory Write"): ``M_t = (1 - w^w e^T) * M_{t-1} + w^w a^T`` with
  ``e = sigmoid(.)``, ``a = tanh(.)``;
* memory utilisation regularisation (Sec. 4.2.1): the write weights pass through a weight transfer
  that depends on the accumulated write weights ``g_{t-1}`` -- in the code (and here) the NTM
  circular shift ``s = softmax(.)`` over ``{0, +1, -1}`` followed by sharpening with
  ``gamma = 4 (softplus(.) + 1)``, produced by the controller that sees ``g_{t-1} / 400`` -- giving
  ``w~^w_t``; ``g_t = g_{t-1} + w~^w_t`` and ``L_reg = lambda * mean_{b,i} (g(i) - mean_j g(j))^2 /
  (m B)`` (the code's ``capacity_loss``, ``lambda = 0.001``, ``B`` the batch size);
* Memory Induction Unit (Sec. 4.2.2): the ``K`` channels with the largest read weights ``w^r_t``
  (``K = 1``) update their state ``S_t(i) = GRU(S_{t-1}(i), [x_t; stop_grad(M_{t-1}(i))])``; the others
  keep theirs. One GRU (units ``d``) is shared by the channels, as in the code.

Prediction (the code's ``Model_MIMN``): the candidate ``e_c`` goes through the cell once more with the
final state (controller step, read head, no write); its output ``o2o([h; r])`` (clipped) is the
memory read-out. The MIU states are attended with the candidate as query (DIN attention: an MLP 80-40
with sigmoids on ``[q, S(i), q - S(i), q * S(i)]``, softmax over the ``m`` channels). The MLP input is
``[e_c; sum_t x_t; read-out; MIU attention; mean_i sumaggre(i) * e_c]`` (``sumaggre`` accumulates
``stop_grad(w^w) a^T``), then an affine layer (the code's ``batch_normalization`` runs with
``training=False``, i.e. with its initial statistics, so it is a learned per-feature scale and shift),
Dense 200 -> PReLU -> Dense 80 -> PReLU (alpha initialised 0.1; the code uses PReLU for MIMN,
``use_dice=False``) -> one logit (the code's two softmax logits reduce to their difference).

The memory state depends on the history only; :meth:`MIMN.score` runs the ``lax.scan`` over the
history once per query and only the read-out per candidate (``O(B C)`` small MLPs).

Departures (and why):

* item ids only: the code concatenates item and category embeddings (width ``2 * 16``); the registry
  builds models from ``(num_users, num_items, hparams)``, so item features cannot reach the module, and
  the memory width is ``dim`` (default 32, the authors' width);
* masked (left-padded) steps leave the whole state unchanged. The code resets the controller, memory
  and MIU states to the initial state at masked steps, which equals "unchanged" for left padding, but
  still updates the read vector and the accumulated write weights there; here a left-padded window
  equals its unpadded version exactly;
* ``g`` accumulates the write weight actually used, ``shift_sharpen(stop_grad(w_c))`` (the code's
  gradient path: only through ``s`` and ``gamma``); the code applies the transfer a second time to the
  already transferred weight before accumulating it, which the paper's ``g_t = sum_c w~^w_c`` does
  not describe;
* sharpening is computed as ``softmax(gamma log w)`` (equal to ``w^gamma / sum w^gamma``, which
  underflows to 0/0 in float32 for ``gamma`` near its clip bound of 84);
* the initial memory is a fixed constant ``1e-5 N(0, 1)`` (the code: ``tanh`` of a non-trainable
  ``N(0, 1e-5)`` variable), the controller and MIU states start at zero, the initial read vector is
  learned (``tanh`` of a parameter, as the code);
* training: one target per window through :func:`jaxrec.train.fit.fit` (2TS Appendix B: per-example
  batching), the registry's sequence loss over ``[positive, negatives]`` logits (sampled softmax by
  default) plus ``L_reg``, instead of the code's binary cross-entropy on labelled clicks; the
  auxiliary loss (``MIMN_with_aux``) is not used (the code's default MIMN has none).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models import losses
from jaxrec.models.sequential import SEQUENCE_LOSSES, LossFn, SequenceModel, _item_embed

Array = jax.Array

SHIFT_RANGE = 1  # the code's shift_range: shifts {0, +1, -1}
MAX_Q = 400.0  # the code's scale of the accumulated write weights fed to the controller
COS_EPS = 1e-8  # the code's cosine-similarity epsilon


class MemoryState(NamedTuple):
  """The candidate-independent state after a history (batch dimension ``B`` first).

  Attributes:
    controller: ``[B, H]`` controller GRU state.
    read: ``[B, d]`` last read vector.
    memory: ``[B, m, d]`` NTM memory.
    w_aggre: ``[B, m]`` accumulated (transferred) write weights ``g``.
    sum_aggre: ``[B, m, d]`` accumulated ``stop_grad(w^w) a^T``.
    channels: ``[B, m, d]`` MIU channel states.
  """

  controller: Array
  read: Array
  memory: Array
  w_aggre: Array
  sum_aggre: Array
  channels: Array


# -- NTM pieces (pure functions) -------------------------------------------------------------------


def _norm(x: Array) -> Array:
  """Euclidean norm over the last axis (finite gradient at 0)."""
  return jnp.sqrt(jnp.sum(x * x, axis=-1) + 1e-20)


def cosine(key: Array, memory: Array) -> Array:
  """``cos(k, M(i))`` as the code: ``k . M(i) / (|k| |M(i)| + 1e-8)``; key ``[B, d]``, memory ``[B, m, d]``
  -> ``[B, m]``."""
  inner = jnp.einsum("bd,bmd->bm", key, memory)
  return inner / (_norm(key)[:, None] * _norm(memory) + COS_EPS)


def content_address(key: Array, beta: Array, key_memory: Array, memory: Array) -> Array:
  """Content-based addressing weights ``[B, m]`` (sum to 1 over the slots).

  ``w(i) = softmax_i(beta * (cos(k, M_key(i)) + cos(k, M(i))) / 2)``; key ``[B, d]``, beta ``[B]``,
  key_memory ``[m, d]`` (shared), memory ``[B, m, d]``.
  """
  key_m = jnp.broadcast_to(key_memory, memory.shape)
  sim = 0.5 * (cosine(key, key_m) + cosine(key, memory))
  return jax.nn.softmax(beta[:, None] * sim, axis=-1)


def shift_sharpen(w: Array, shift: Array, gamma: Array) -> Array:
  """NTM location step (the code's ``capacity_overflow``): circular convolution then sharpening.

  ``w~(i) = sum_j w(j) s((i - j) mod m)`` with ``s`` over shifts ``{0, +1, -1}`` (``shift`` ``[B, 3]``),
  then ``w~^gamma / sum w~^gamma`` computed as ``softmax(gamma log w~)``; ``w`` ``[B, m]``, ``gamma``
  ``[B]``.
  """
  m = w.shape[-1]
  if m < 2 * SHIFT_RANGE + 1:
    raise ValueError(f"MIMN: memory_slots must be >= {2 * SHIFT_RANGE + 1} for the shift, got {m}")
  zeros = jnp.zeros(shift.shape[:-1] + (m - 2 * SHIFT_RANGE - 1,), shift.dtype)
  s = jnp.concatenate([shift[..., :SHIFT_RANGE + 1], zeros, shift[..., SHIFT_RANGE + 1:]], axis=-1)
  idx = (jnp.arange(m)[:, None] - jnp.arange(m)[None, :]) % m  # [i, j] -> (i - j) mod m
  conv = jnp.einsum("bj,bij->bi", w, s[:, idx])
  return jax.nn.softmax(gamma[:, None] * jnp.log(jnp.maximum(conv, 1e-30)), axis=-1)


def ntm_read(memory: Array, w: Array) -> Array:
  """``r = sum_i w(i) M(i)``: memory ``[B, m, d]``, weights ``[B, m]`` -> ``[B, d]``."""
  return jnp.einsum("bm,bmd->bd", w, memory)


def ntm_write(memory: Array, w: Array, erase: Array, add: Array) -> Array:
  """``M' = M * (1 - w e^T) + w a^T``: memory ``[B, m, d]``, weights ``[B, m]``, erase/add ``[B, d]``."""
  return memory * (1.0 - w[:, :, None] * erase[:, None, :]) + w[:, :, None] * add[:, None, :]


def utilization_loss(w_aggre: Array, mask: Optional[Array] = None, weight: float = 0.001) -> Array:
  """The code's ``capacity_loss``: ``weight * mean_{b,i} (g(i) - mean_j g(j))^2 / (m B)``.

  ``w_aggre`` ``[B, m]``; ``B`` is the (static) batch size as in the code; ``mask`` ``[B]`` averages
  over the real rows only.
  """
  b, m = w_aggre.shape
  dev = jnp.mean((w_aggre - jnp.mean(w_aggre, axis=-1, keepdims=True)) ** 2, axis=-1)
  return weight * losses.masked_mean(dev, mask) / (m * b)


def _tf_gru(p: Mapping[str, Array], h: Array, x: Array) -> Array:
  """TF1 ``GRUCell``: ``r, u = sigmoid([x, h] W_g + b_g)``, ``c = tanh([x, r h] W_c + b_c)``,
  ``h' = u h + (1 - u) c``. The kernels are split by input block (``x`` rows first), so ``x`` and ``h``
  may broadcast against each other (e.g. candidates ``[B, C, .]`` against a state ``[B, 1, .]``)."""
  n = x.shape[-1]
  gates = jax.nn.sigmoid(x @ p["gates_kernel"][:n] + h @ p["gates_kernel"][n:] + p["gates_bias"])
  r, u = jnp.split(gates, 2, axis=-1)
  c = jnp.tanh(x @ p["cand_kernel"][:n] + (r * h) @ p["cand_kernel"][n:] + p["cand_bias"])
  return u * h + (1.0 - u) * c


def _prelu(x: Array, alpha: Array) -> Array:
  return jnp.maximum(0.0, x) + alpha * jnp.minimum(0.0, x)


def _initial_memory(m: int, d: int) -> Array:
  """The code's initial memory: ``tanh`` of a fixed ``N(0, 1e-5)`` draw (a constant here)."""
  return jnp.tanh(1e-5 * jax.random.normal(jax.random.PRNGKey(0), (m, d), jnp.float32))


# -- the model ---------------------------------------------------------------------------------------


class MIMN(SequenceModel):
  """MIMN: NTM memory + Memory Induction Unit over the history, Embedding&MLP read-out per candidate.

  Attributes:
    dim: item embedding and memory width ``d`` (authors: 32 = item 16 + category 16).
    hidden: controller GRU units and read-out width (authors' ``HIDDEN_SIZE``: 32).
    memory_slots: ``m`` (authors: 4; at least 3 for the shift).
    induction: use the Memory Induction Unit (authors' full MIMN: yes).
    top_k: channels updated per step by the MIU (authors: 1).
    util_reg: memory utilisation regularisation (authors' full MIMN: yes).
    util_weight: its weight ``lambda`` (authors: 0.001, then divided by ``m B``).
    clip_value: clip of the head parameters and of the read-out (authors: 20).
    sharp_value: sharpness factor of ``beta`` and ``gamma`` (authors: 2).
    att_hidden: DIN attention MLP widths (authors: 80, 40).
    mlp_hidden: prediction MLP widths (authors: 200, 80).
  """

  dim: int = 32
  hidden: int = 32
  memory_slots: int = 4
  induction: bool = True
  top_k: int = 1
  util_reg: bool = True
  util_weight: float = 0.001
  clip_value: float = 20.0
  sharp_value: float = 2.0
  att_hidden: tuple = (80, 40)
  mlp_hidden: tuple = (200, 80)

  @property
  def _head_size(self) -> int:
    # key d, beta 1, (unused interpolation gate) 1, shift 2R + 1, gamma 1 (the code's layout)
    return self.dim + 3 + (2 * SHIFT_RANGE + 1)

  def setup(self):
    d, h, m = self.dim, self.hidden, self.memory_slots
    if m < 2 * SHIFT_RANGE + 1:
      raise ValueError(f"MIMN: memory_slots must be >= {2 * SHIFT_RANGE + 1}, got {m}")
    if not 1 <= self.top_k <= m:
      raise ValueError(f"MIMN: top_k must be in [1, memory_slots={m}], got {self.top_k}")
    self.item_emb = _item_embed(self.num_items, d)
    glorot, zeros = nn.initializers.glorot_uniform(), nn.initializers.zeros

    def gru(name, n_in, units):
      return {"gates_kernel": self.param(f"{name}_gates_kernel", glorot, (n_in + units, 2 * units)),
              "gates_bias": self.param(f"{name}_gates_bias", nn.initializers.ones, (2 * units,)),
              "cand_kernel": self.param(f"{name}_cand_kernel", glorot, (n_in + units, units)),
              "cand_bias": self.param(f"{name}_cand_bias", zeros, (units,))}

    self.controller = gru("controller", 2 * d, h)
    n_par = 2 * self._head_size + 2 * d  # read head, write head, erase, add
    n_par_in = h + (m if self.util_reg else 0)
    self.o2p_kernel = self.param("o2p_kernel", nn.initializers.truncated_normal(h ** -0.5), (n_par_in, n_par))
    self.o2p_bias = self.param("o2p_bias", zeros, (n_par,))
    self.o2o_kernel = self.param("o2o_kernel", nn.initializers.truncated_normal((h + d) ** -0.5), (h + d, h))
    self.o2o_bias = self.param("o2o_bias", zeros, (h,))
    self.key_memory = self.param("key_memory", nn.initializers.normal(0.5), (m, d))
    self.read_init = self.param("read_init", lambda k, s: glorot(k, (1,) + s)[0], (d,))
    if self.induction:
      self.channel_gru = gru("channel", 2 * d, d)
      widths = (4 * d,) + tuple(self.att_hidden)
      self.att = [(self.param(f"att_{k}_kernel", glorot, (a, b)), self.param(f"att_{k}_bias", zeros, (b,)))
                  for k, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
      self.att_out = (self.param("att_out_kernel", glorot, (widths[-1], 1)),
                      self.param("att_out_bias", zeros, (1,)))
    n_in = 4 * d + h if self.induction else 3 * d + h
    self.in_scale = self.param("in_scale", nn.initializers.ones, (n_in,))
    self.in_bias = self.param("in_bias", zeros, (n_in,))
    widths = (n_in,) + tuple(self.mlp_hidden)
    self.mlp = [(self.param(f"mlp_{k}_kernel", glorot, (a, b)), self.param(f"mlp_{k}_bias", zeros, (b,)),
                 self.param(f"mlp_{k}_alpha", nn.initializers.constant(0.1), (b,)))
                for k, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    self.out = (self.param("out_kernel", glorot, (widths[-1], 1)), self.param("out_bias", zeros, (1,)))

  # -- the recurrent cell --------------------------------------------------------------------------

  def _head(self, par: Array):
    """Head parameters -> key ``tanh``, strength ``beta``, shift ``softmax`` and sharpening ``gamma``."""
    d, sv = self.dim, self.sharp_value
    key = jnp.tanh(par[..., :d])
    beta = (jax.nn.softplus(par[..., d]) + 1.0) * sv
    shift = jax.nn.softmax(par[..., d + 2:d + 2 + 2 * SHIFT_RANGE + 1], axis=-1)
    gamma = 2.0 * (jax.nn.softplus(par[..., -1]) + 1.0) * sv
    return key, beta, shift, gamma

  def initial_state(self, batch: int) -> MemoryState:
    """The state before any behaviour."""
    d, m = self.dim, self.memory_slots
    return MemoryState(controller=jnp.zeros((batch, self.hidden)),
                       read=jnp.broadcast_to(jnp.tanh(self.read_init), (batch, d)),
                       memory=jnp.broadcast_to(_initial_memory(m, d), (batch, m, d)),
                       w_aggre=jnp.zeros((batch, m)), sum_aggre=jnp.zeros((batch, m, d)),
                       channels=jnp.zeros((batch, m, d)))

  def _weights(self) -> dict:
    """The cell's parameters as a plain dict (read outside ``lax.scan``, closed over inside)."""
    w = {"controller": self.controller, "o2p_kernel": self.o2p_kernel, "o2p_bias": self.o2p_bias,
         "key_memory": jnp.tanh(self.key_memory)}
    if self.induction:
      w["channel"] = self.channel_gru
    return w

  def _step(self, w: dict, state: MemoryState, x: Array, mask: Array) -> MemoryState:
    """One behaviour ``x`` ``[B, d]``; rows with ``mask`` false keep ``state`` unchanged."""
    d, hs = self.dim, self._head_size
    h = _tf_gru(w["controller"], state.controller, jnp.concatenate([x, state.read], axis=-1))
    par_in = h
    if self.util_reg:
      par_in = jnp.concatenate([h, jax.lax.stop_gradient(state.w_aggre / MAX_Q)], axis=-1)
    par = jnp.clip(par_in @ w["o2p_kernel"] + w["o2p_bias"], -self.clip_value, self.clip_value)
    k_r, beta_r, _, _ = self._head(par[:, :hs])
    k_w, beta_w, shift_w, gamma_w = self._head(par[:, hs:2 * hs])
    erase = jax.nn.sigmoid(par[:, 2 * hs:2 * hs + d])
    add = jnp.tanh(par[:, 2 * hs + d:])
    mem = state.memory
    w_read = content_address(k_r, beta_r, w["key_memory"], mem)
    w_write = content_address(k_w, beta_w, w["key_memory"], mem)
    if self.util_reg:
      g_inc = shift_sharpen(jax.lax.stop_gradient(w_write), shift_w, gamma_w)
      w_write = shift_sharpen(w_write, shift_w, gamma_w)
    else:
      g_inc = w_write
    read = ntm_read(mem, w_read)
    channels = state.channels
    if self.induction:  # MIU: the top-k channels of the read weights take a GRU step
      _, top = jax.lax.top_k(w_read, self.top_k)
      chosen = jnp.sum(jax.nn.one_hot(top, self.memory_slots, dtype=bool), axis=1) > 0  # [B, m]
      inp = jnp.concatenate([jnp.broadcast_to(x[:, None], mem.shape), jax.lax.stop_gradient(mem)], axis=-1)
      channels = jnp.where(chosen[..., None], _tf_gru(w["channel"], channels, inp), channels)
    new = MemoryState(controller=h, read=read, memory=ntm_write(mem, w_write, erase, add),
                      w_aggre=state.w_aggre + g_inc,
                      sum_aggre=state.sum_aggre + jax.lax.stop_gradient(w_write)[..., None] * add[:, None],
                      channels=channels)
    keep = mask.astype(bool)
    return jax.tree_util.tree_map(lambda n, o: jnp.where(keep.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
                                  new, state)

  def step(self, state: MemoryState, x: Array, mask: Array) -> MemoryState:
    """One behaviour (embedding ``x`` ``[B, d]``, ``mask`` ``[B]``): the scan's body, exposed for tests."""
    return self._step(self._weights(), state, x, mask)

  def memory_state(self, history: Array, history_mask: Array) -> MemoryState:
    """The state after the history ``[B, L]`` (right-aligned; padded steps change nothing), by
    ``lax.scan`` over time."""
    w = self._weights()
    x = self.embed_history(history, history_mask)
    xs = (jnp.swapaxes(x, 0, 1), jnp.swapaxes(history_mask.astype(bool), 0, 1))
    state, _ = jax.lax.scan(lambda s, xm: (self._step(w, s, *xm), None), self.initial_state(history.shape[0]),
                            xs)
    return state

  def encode(self, history: Array, history_mask: Array, user: Optional[Array] = None,
             deterministic: bool = True) -> Array:
    """``[B, F]``: the candidate-independent user state, flattened (what the paper's UIC stores per
    user: :class:`MemoryState` and the history sum). MIMN scores through :meth:`readout`, not a dot
    product with this vector."""
    del user, deterministic
    state = self.memory_state(history, history_mask)
    his_sum = jnp.sum(self.embed_history(history, history_mask), axis=1)
    b = history.shape[0]
    return jnp.concatenate([x.reshape(b, -1) for x in state] + [his_sum], axis=-1)

  # -- read-out ------------------------------------------------------------------------------------

  def readout(self, state: MemoryState, his_sum: Array, cand: Array) -> Array:
    """Logits ``[B, C]`` of candidates ``cand`` (embeddings ``[C, d]`` shared or ``[B, C, d]``)."""
    hs = self._head_size
    c3 = cand[None] if cand.ndim == 2 else cand  # [1 or B, C, d]
    b = state.controller.shape[0]
    # The cell once more with the candidate as input (controller step, read head; no write).
    h = self._readout_controller(state, c3)  # [B, C, H]
    kern = self.o2p_kernel[:, :hs]
    par = h @ kern[:self.hidden] + self.o2p_bias[:hs]
    if self.util_reg:
      par = par + (jax.lax.stop_gradient(state.w_aggre / MAX_Q) @ kern[self.hidden:])[:, None]
    par = jnp.clip(par, -self.clip_value, self.clip_value)
    key, beta, _, _ = self._head(par)  # [B, C, d], [B, C]
    mem = state.memory

    key_m = jnp.broadcast_to(jnp.tanh(self.key_memory), mem.shape)

    def cos(kc, mm):  # [B, C, d] x [B, m, d] -> [B, C, m]
      return jnp.einsum("bcd,bmd->bcm", kc, mm) / (_norm(kc)[..., None] * _norm(mm)[:, None] + COS_EPS)

    sim = 0.5 * (cos(key, key_m) + cos(key, mem))
    w_read = jax.nn.softmax(beta[..., None] * sim, axis=-1)
    read = jnp.einsum("bcm,bmd->bcd", w_read, mem)
    read_out = jnp.clip(h @ self.o2o_kernel[:self.hidden] + read @ self.o2o_kernel[self.hidden:] + self.o2o_bias,
                        -self.clip_value, self.clip_value)
    c_b = jnp.broadcast_to(c3, (b,) + c3.shape[1:])
    feats = [c_b, jnp.broadcast_to(his_sum[:, None], c_b.shape), read_out]
    if self.induction:
      feats.append(self._channel_attention(c3, state.channels))
    feats.append(jnp.mean(state.sum_aggre, axis=1)[:, None] * c3)
    z = jnp.concatenate(feats, axis=-1) * self.in_scale + self.in_bias
    for kernel, bias, alpha in self.mlp:
      z = _prelu(z @ kernel + bias, alpha)
    return (z @ self.out[0] + self.out[1])[..., 0]

  def _readout_controller(self, state: MemoryState, c3: Array) -> Array:
    """Controller GRU step on ``[candidate; r]`` from the final state: ``[B, C, H]``."""
    d = self.dim
    p = self.controller
    # [x; r] W = x W_x + r W_r: the candidate part is shared across queries when c3 is [1, C, d].
    xr = c3 @ p["gates_kernel"][:d] + (state.read @ p["gates_kernel"][d:2 * d])[:, None]
    h0 = state.controller[:, None]
    gates = jax.nn.sigmoid(xr + h0 @ p["gates_kernel"][2 * d:] + p["gates_bias"])
    r, u = jnp.split(gates, 2, axis=-1)
    xc = c3 @ p["cand_kernel"][:d] + (state.read @ p["cand_kernel"][d:2 * d])[:, None]
    c = jnp.tanh(xc + (r * h0) @ p["cand_kernel"][2 * d:] + p["cand_bias"])
    return u * h0 + (1.0 - u) * c

  def _channel_attention(self, c3: Array, channels: Array) -> Array:
    """DIN attention of the candidates (queries ``[1 or B, C, d]``) over the MIU states ``[B, m, d]``.

    The first layer on ``[q, f, q - f, q * f]`` is split by block, ``(W_q + W_d) q + (W_f - W_d) f +
    W_p (q * f)``, so no ``[B, C, m, 4d]`` tensor is built.
    """
    d = self.dim
    (k1, b1), rest = self.att[0], self.att[1:]
    w_q, w_f, w_d, w_p = k1[:d], k1[d:2 * d], k1[2 * d:3 * d], k1[3 * d:]
    qf = (jnp.einsum("cd,bmd,dk->bcmk", c3[0], channels, w_p) if c3.shape[0] == 1
          else jnp.einsum("bcd,bmd,dk->bcmk", c3, channels, w_p))
    z = (c3 @ (w_q + w_d))[:, :, None] + (channels @ (w_f - w_d))[:, None] + qf + b1
    z = jax.nn.sigmoid(z)
    for kernel, bias in rest:
      z = jax.nn.sigmoid(z @ kernel + bias)
    logits = (z @ self.att_out[0] + self.att_out[1])[..., 0]  # [B, C, m]
    return jnp.einsum("bcm,bmd->bcd", jax.nn.softmax(logits, axis=-1), channels)

  # -- ScoreFn ----------------------------------------------------------------------------------------

  def score_and_reg(self, queries: Mapping[str, Array], items: Array) -> tuple[Array, Array]:
    """``([B, C] logits, L_reg)`` for candidates ``items`` (``[C]`` shared or ``[B, C]``)."""
    history, mask = queries["history"], queries["history_mask"]
    state = self.memory_state(history, mask)
    his_sum = jnp.sum(self.embed_history(history, mask), axis=1)
    if items.ndim not in (1, 2) or (items.ndim == 2 and items.shape[0] != history.shape[0]):
      raise ValueError(f"MIMN.score: items must be [C] or [B={history.shape[0]}, C], got {items.shape}")
    logits = self.readout(state, his_sum, self.item_emb(items))
    reg = (utilization_loss(state.w_aggre, queries.get("mask"), self.util_weight) if self.util_reg
           else jnp.zeros((), logits.dtype))
    return logits, reg

  def score(self, queries: Mapping[str, Array], items: Array, deterministic: bool = True) -> Array:
    """ScoreFn: queries with "history" ``[B, L]`` and "history_mask" ``[B, L]``; items ``[C]`` or
    ``[B, C]`` -> ``[B, C]``. The scan runs once per query; only the read-out sees the candidates."""
    del deterministic  # no dropout
    return self.score_and_reg(queries, items)[0]


def make_loss_fn(module: MIMN, loss: str = "softmax") -> LossFn:
  """``loss_fn(params, batch, rng) -> (loss, aux)``: the sequence loss over ``[positive, negatives]``
  (``"softmax"``, ``"bpr"``, ``"log"``; or ``"full_softmax"`` over every item) on one-target-per-window
  batches, plus the memory utilisation regulariser ``L_reg``. ``rng`` is unused (no dropout)."""
  if loss not in SEQUENCE_LOSSES:
    raise ValueError(f"unknown loss {loss!r}; expected one of {SEQUENCE_LOSSES}")

  def loss_fn(params, batch, rng):
    del rng
    if "targets" in batch:
      raise ValueError("MIMN trains one target per window (register it with all_positions=False)")
    mask = batch.get("mask")
    if loss == "full_softmax":
      logits, reg = module.apply(params, batch, jnp.arange(module.num_items, dtype=jnp.int32),
                                 method=module.score_and_reg)
      value = losses.full_softmax(logits, batch["positive"], mask)
      return value + reg, {"loss": value + reg, "util_reg": reg}
    cands = jnp.concatenate([batch["positive"][:, None], batch["negatives"]], axis=1).astype(jnp.int32)
    scores, reg = module.apply(params, batch, cands, method=module.score_and_reg)
    value = losses.candidate_loss(loss, scores, mask)
    return value + reg, {"loss": value + reg, "util_reg": reg, **losses.ranking_aux(scores, mask)}

  return loss_fn
