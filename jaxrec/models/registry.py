"""One registry of base recommenders: model name -> :class:`ModelSpec`.

The training binary and every method build models through this registry::

    spec = registry.get("sasrec")
    module = spec.make(num_users, num_items, dim=32)       # defaults overridden by keyword
    params = spec.init(rng, module, sample_batch)           # {"params": ...}, a plain pytree
    loss_fn = spec.loss_fn(module)                          # (params, batch, rng) -> (loss, aux)
    score_fn = spec.score_fn(module)                        # ScoreFn(params, queries, items) -> [B, C]

Families and their training batches (see :mod:`jaxrec.models.mf`, :mod:`jaxrec.models.sequential`):

* ``"user"``: ``{"user" [B], "positive" [B], "negatives" [B, N], "mask" [B]}``;
* ``"sequence"``: the same plus ``"history" [B, L]`` and ``"history_mask" [B, L]``;
* ``"sequence"`` with :attr:`ModelSpec.all_positions` (causal encoders: GRU4Rec, SASRec): trained on
  every position of a sequence at once, ``{"user" [B], "history" [B, L], "history_mask" [B, L],
  "targets" [B, L], "target_mask" [B, L], "negatives" [B, L, N], "mask" [B]}`` (see
  :mod:`jaxrec.models.sequential`); their loss function also accepts the one-target-per-window batch.

Registered: ``mf-bpr`` and ``mf-log`` (Rendle et al. 2009; MF with log loss as in MeLON/SML),
``ncf`` (He et al. 2017), ``gru4rec`` (Hidasi et al. 2016), ``caser`` (Tang & Wang 2018), ``sasrec``
(Kang & McAuley 2018), ``sumpool``, ``bert4rec`` (Sun et al. 2019; Cloze-trained, its own loss in
:mod:`jaxrec.models.bert4rec`), ``dien`` (Zhou et al. 2019; candidate-dependent AUGRU, auxiliary loss in
:mod:`jaxrec.models.dien`), ``mimn`` (Pi et al. 2019; NTM memory + memory induction unit,
:mod:`jaxrec.models.mimn`). Adding a model is one :func:`register` call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models import bert4rec, mf, ncf, sequential
from jaxrec.models import dien  # DIEN (Zhou et al. 2019)
from jaxrec.models import mimn  # MIMN (Pi et al. 2019)

Array = jax.Array
ScoreFn = Callable[[Any, Mapping[str, Array], Array], Array]
LossFn = Callable[[Any, Mapping[str, Array], Any], tuple[Array, dict]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build, initialise, train and score one registered model.

  Attributes:
    name: registry name.
    family: ``"user"`` (scores from the user id) or ``"sequence"`` (from the history window).
    module_cls: the Flax module class, built as ``module_cls(num_users, num_items, **hparams)``.
    defaults: default hyper-parameters (module fields).
    default_loss: the loss :meth:`loss_fn` uses unless told otherwise.
    make_loss: ``(module, loss_name) -> loss_fn``.
    all_positions: trained on all positions of a sequence (the module has ``encode_sequence``);
      :mod:`jaxrec.train.fit` then builds the all-position examples.
  """

  name: str
  family: str
  module_cls: Callable[..., nn.Module]
  defaults: Mapping[str, Any]
  default_loss: str
  make_loss: Callable[[nn.Module, str], LossFn]
  all_positions: bool = False

  def make(self, num_users: int, num_items: int, **hparams) -> nn.Module:
    """The module with ``defaults`` overridden by ``hparams`` (the loss is chosen in :meth:`loss_fn`)."""
    unknown = set(hparams) - set(self.defaults)
    if unknown:
      raise ValueError(f"{self.name}: unknown hyper-parameters {sorted(unknown)}; "
                       f"known: {sorted(self.defaults)} (choose the loss with loss_fn(module, loss=...))")
    return self.module_cls(num_users=num_users, num_items=num_items, **{**self.defaults, **hparams})

  def init(self, rng: Array, module: nn.Module, sample_batch: Mapping[str, Array]) -> dict:
    """``{"params": ...}`` initialised on ``sample_batch`` (a training batch of this family, any format)."""
    params_rng, dropout_rng = jax.random.split(rng)
    if "targets" in sample_batch:  # all-position format: initialise on the last position's candidates
      sample_batch = dict(sample_batch, positive=sample_batch["targets"][:, -1],
                          negatives=sample_batch["negatives"][:, -1])
    items = mf.candidates(sample_batch)
    return dict(module.init({"params": params_rng, "dropout": dropout_rng}, sample_batch, items,
                            method=module.score))

  def loss_fn(self, module: nn.Module, loss: str | None = None) -> LossFn:
    """``(params, batch, rng) -> (loss, aux)`` with ``loss`` (default :attr:`default_loss`)."""
    return self.make_loss(module, loss or self.default_loss)

  def score_fn(self, module: nn.Module) -> ScoreFn:
    """The evaluation :data:`ScoreFn` ``(params, queries, items) -> [B, C]`` (dropout off).

    Hashable by value (a frozen dataclass over the module), so the evaluation kernels, which take it
    as a static jit argument, compile once per model architecture and take ``params`` as an argument.
    """
    return ModuleScoreFn(module)


@dataclasses.dataclass(frozen=True)
class ModuleScoreFn:
  """``module.score`` as a :data:`ScoreFn` with explicit parameters: ``(params, queries, items)``."""

  module: nn.Module

  def __call__(self, params, queries: Mapping[str, Array], items: Array) -> Array:
    return self.module.apply(params, queries, items, method=self.module.score)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
  """Adds ``spec`` under ``spec.name``; a name can be registered once."""
  if spec.family not in ("user", "sequence"):
    raise ValueError(f"{spec.name}: family must be 'user' or 'sequence', got {spec.family!r}")
  if spec.all_positions and not hasattr(spec.module_cls, "encode_sequence"):
    raise ValueError(f"{spec.name}: all_positions needs a module with encode_sequence")
  if spec.name in _REGISTRY:
    raise ValueError(f"model {spec.name!r} is already registered")
  _REGISTRY[spec.name] = spec
  return spec


def get(name: str) -> ModelSpec:
  """The spec registered as ``name``."""
  if name not in _REGISTRY:
    raise KeyError(f"unknown model {name!r}; registered: {names()}")
  return _REGISTRY[name]


def names() -> list[str]:
  """Registered model names, sorted."""
  return sorted(_REGISTRY)


def sample_batch(family: str, batch_size: int = 2, num_negatives: int = 2, history_len: int = 5,
                 all_positions: bool = False) -> dict[str, Array]:
  """An all-zeros training batch of ``family`` with the given shapes (for :meth:`ModelSpec.init`).

  ``all_positions``: the all-position sequence format (``targets``, ``target_mask``, ``negatives``
  ``[B, L, N]``) instead of one target per window.
  """
  b = {"user": jnp.zeros((batch_size,), jnp.int32), "positive": jnp.zeros((batch_size,), jnp.int32),
       "negatives": jnp.zeros((batch_size, num_negatives), jnp.int32),
       "mask": jnp.ones((batch_size,), bool)}
  if family == "sequence":
    b["history"] = jnp.zeros((batch_size, history_len), jnp.int32)
    b["history_mask"] = jnp.ones((batch_size, history_len), bool)
    if all_positions:
      del b["positive"]
      b["targets"] = jnp.zeros((batch_size, history_len), jnp.int32)
      b["target_mask"] = jnp.ones((batch_size, history_len), bool)
      b["negatives"] = jnp.zeros((batch_size, history_len, num_negatives), jnp.int32)
  return b


register(ModelSpec("mf-bpr", "user", mf.MF, {"dim": 64, "use_bias": False, "init_scale": 0.1}, "bpr",
                   mf.make_loss_fn))
register(ModelSpec("mf-log", "user", mf.MF, {"dim": 64, "use_bias": True, "init_scale": 0.1}, "log",
                   mf.make_loss_fn))
register(ModelSpec("ncf", "user", ncf.NeuMF,
                   {"mf_dim": 8, "mlp_layers": (64, 32, 16), "init_scale": 0.01, "dropout": 0.0},
                   "log", ncf.make_loss_fn))
register(ModelSpec("gru4rec", "sequence", sequential.GRU4Rec, {"dim": 64, "hidden": 64, "dropout": 0.25},
                   "softmax", sequential.make_loss_fn, all_positions=True))
register(ModelSpec("caser", "sequence", sequential.Caser,
                   {"dim": 50, "max_len": 5, "num_h": 16, "num_v": 4, "max_height": None, "dropout": 0.5,
                    "user_dim": 0}, "softmax", sequential.make_loss_fn))
register(ModelSpec("sasrec", "sequence", sequential.SASRec,
                   {"dim": 50, "max_len": 50, "num_blocks": 2, "num_heads": 1, "dropout": 0.2},
                   "softmax", sequential.make_loss_fn, all_positions=True))
register(ModelSpec("sumpool", "sequence", sequential.SumPooling, {"dim": 64, "mean": True}, "softmax",
                   sequential.make_loss_fn))
register(ModelSpec("bert4rec", "sequence", bert4rec.BERT4Rec,
                   {"dim": 64, "max_len": 200, "num_blocks": 2, "num_heads": 2, "dropout": 0.1,
                    "mask_prob": 0.2, "max_predictions": 20}, "full_softmax", bert4rec.make_loss_fn,
                   all_positions=True))
register(ModelSpec("dien", "sequence", dien.DIEN,
                   {"dim": 36, "hidden": 36, "max_len": 20, "attention_layers": (80, 40),
                    "mlp_layers": (200, 80), "aux_layers": (100, 50), "aux_weight": 1.0,
                    "candidate_chunk": 64}, "softmax", dien.make_loss_fn))
register(ModelSpec("mimn", "sequence", mimn.MIMN,
                   {"dim": 32, "hidden": 32, "memory_slots": 4, "induction": True, "top_k": 1, "util_reg": True,
                    "util_weight": 0.001, "clip_value": 20.0, "sharp_value": 2.0, "att_hidden": (80, 40),
                    "mlp_hidden": (200, 80)}, "softmax", mimn.make_loss_fn))
