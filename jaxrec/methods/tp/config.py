"""The TP hyper-parameters (paper 001, Table 1 and Sec. 4.1) as one frozen, validated config.

Paper defaults where it gives them: ``k = 2`` inner updates, SGD inner updates, Adam on the outer
update, ``lambda`` tuned in ``{0, 0.01, 0.1, 1, 10}``, the 20% most active users are the head. The rest
(inner rate ``alpha``, mini-batch size, window length, negatives, discriminator size) the paper does not
give; ours are listed below. Departures: ``beta = 0.002`` instead of the paper's 0.001, because 8 chains
average into one outer step (8 times fewer outer steps per epoch than one chain); the plain encoders'
Adam rate (``pretrain_lr``) is the same 0.002 so that neither side gets a larger step. ``task_sampling``
defaults to ``"all"`` (every subsequence once per epoch), so a TP epoch and a plain epoch see the same
data.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from jaxrec.train import fit as fit_lib

TASK_SAMPLING = ("uniform", "all")
OUTER_OPTIMIZERS = ("adam", "sgd")

_RULES = {
    "k": ("int", 1, False), "num_chains": ("int", 1, False), "support": ("int", 1, False),
    "history_len": ("int", 1, False), "num_negatives": ("int", 1, False),
    "alpha": ("pos", 0, False), "disc_alpha": ("pos", 0, True), "beta": ("pos", 0, False),
    "disc_beta": ("pos", 0, True), "outer_optimizer": (OUTER_OPTIMIZERS, None, False),
    "adam_eps": ("pos", 0, False), "lam": ("float", 0, False), "head_fraction": ("pos", 0, False),
    "task_sampling": (TASK_SAMPLING, None, False), "epochs": ("int", 1, False),
    "pretrain_epochs": ("int", 0, False), "pretrain_lr": ("pos", 0, False),
    "pretrain_batch_size": ("int", 1, False), "patience": ("int", 1, True),
    "valid_negatives": ("int", 1, False), "dropout": ("bool", None, False),
}


@dataclasses.dataclass(frozen=True)
class TPConfig:
  """Everything a TP run depends on besides the data, the encoder and the seed.

  Attributes:
    k: inner SGD updates per outer update (Eq. 6; ``k = 1`` is joint training, Sec. 3.3).
    num_chains: inner chains run at once (vmapped); the outer direction is their average (see
      :mod:`.alignment`). 1 is the paper's one-chain Algorithm 1.
    support: subsequences per inner mini-batch ``D`` (all from one user's task); a user with fewer has
      the rest masked.
    history_len: window ``L`` of each subsequence (capped by the encoder's ``max_len``).
    num_negatives: sampled negatives per subsequence of the binary cross-entropy (Eq. 2).
    alpha: inner SGD rate of the encoder (Eq. 6).
    disc_alpha: inner SGD rate of the discriminator (None: ``alpha``).
    beta: outer rate (Eq. 7); the Adam learning rate with ``outer_optimizer="adam"`` (paper: 0.001).
    disc_beta: outer rate of the discriminator (None: ``beta``).
    outer_optimizer: ``"adam"`` (paper) or ``"sgd"`` (Eq. 7 literally: ``theta + beta (theta_k - theta)``).
    adam_eps: Adam's epsilon on the outer update.
    lam: ``lambda`` of Eq. 10 (0: no adversarial term; the discriminator still learns, unused).
    head_fraction: share of training users labelled head for the discriminator (Sec. 4.1: 20%).
    disc_hidden: hidden layer sizes of the discriminator MLP (ReLU), then one logit.
    task_sampling: ``"uniform"``: an epoch visits every training user once, one mini-batch of up to
      ``support`` random subsequences each (Algorithm 1's "select a user"); ``"all"``: every subsequence
      once per epoch, each user's cut into mini-batches of ``support`` (as many gradient evaluations as
      plain training).
    epochs: meta-training epochs.
    pretrain_epochs: plain joint training epochs first (0: none; a stage of its own).
    pretrain_lr, pretrain_batch_size: Adam rate and windows per step of the pre-training stage.
    patience: validations without improvement before stopping (None: never).
    valid_negatives: sampled negatives of the per-epoch validation (drawn once).
    dropout: the encoder's dropout on during inner steps (its evaluation never uses dropout).
  """

  k: int = 2
  num_chains: int = 8
  support: int = 16
  history_len: int = 10
  num_negatives: int = 4
  alpha: float = 0.1
  disc_alpha: Optional[float] = None
  beta: float = 2e-3
  disc_beta: Optional[float] = None
  outer_optimizer: str = "adam"
  adam_eps: float = 1e-8
  lam: float = 0.1
  head_fraction: float = 0.2
  disc_hidden: tuple[int, ...] = (32,)
  task_sampling: str = "all"
  epochs: int = 10
  pretrain_epochs: int = 0
  pretrain_lr: float = 2e-3
  pretrain_batch_size: int = 256
  patience: Optional[int] = 3
  valid_negatives: int = 100
  dropout: bool = True

  def __post_init__(self):
    fit_lib.check_fields(self, _RULES)
    if self.head_fraction >= 1:
      raise fit_lib.ConfigError("TPConfig", "head_fraction", f"must be in (0, 1), got {self.head_fraction}")
    if not all(isinstance(h, int) and h >= 1 for h in self.disc_hidden):
      raise fit_lib.ConfigError("TPConfig", "disc_hidden",
                                f"must be positive integers, got {self.disc_hidden}")

  def static(self) -> tuple:
    """What the compiled meta-step depends on (no budget, no seed): the learner cache key."""
    return (self.k, self.num_chains, self.support, self.history_len, self.num_negatives, self.alpha,
            self.disc_alpha, self.beta, self.disc_beta, self.outer_optimizer, self.adam_eps, self.lam,
            tuple(self.disc_hidden), self.dropout)
