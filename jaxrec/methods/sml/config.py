"""SML's hyper-parameters and variants (paper 003, Sec. 4.1.2 and 4.3; the authors' code).

Defaults follow the paper where it fixes a value (filters ``[10, 5]``, FC 512, one negative per positive,
Adam) and the authors' code where the paper leaves a grid (Step 1: Adam ``1e-2``, batch 1024; Step 2:
Adam ``1e-3`` with weight decay ``1e-4``, batch 256; 10 repetitions, the Yelp setting).

Variants (``variant``):

* ``"sml"``: the paper's method (Eq. 4-11, Algorithms 1 and 2).
* ``"sml-code"``: the authors' coded transfer: ``w_hat`` detached inside the product row, no epsilon,
  the sigmoid GELU; the MF tables are set to the transfer output after each Step 1 (later repetitions
  start Step 1 from it) and the Step-1 Adam state is never reset.
* ``"sml-cnn"`` / ``"sml-fc"``: the transfer without its convolutions / without its FC layer.
* ``"sml-n"``: Step 2 optimises ``L_s(Theta | D_t)`` instead of ``L_s(Theta | D_{t+1})``.
* ``"sml-s"``: the transfer is not updated from block ``freeze_from`` on (the test periods).
* ``"sml-fp"``: Step 1 learns ``W_hat`` on the MF loss of ``W_hat`` itself, not through the transfer.

The first streamed block (``first_task``): Algorithm 1 starts from a ``W_{-1}`` and trains the transfer
on every task, the first included. ``"initial"`` (default) takes ``W_{-1} = W_hat_0 = W_0``, the
pre-trained model every baseline starts from, so Step 2 trains ``Theta`` on the first block (after it is
scored) and no served model comes from an untrained transfer. ``"zeros"`` is the authors' code
(``last_user_weight`` starts at zero, ``W_hat_0 = W_0``); it needs ``eps > 0``, since the product row
divides by ``||W_{-1}|| = 0`` (the authors' un-epsiloned division is 0/0 there, so ``sml-code`` keeps
``"initial"``). ``"skip"`` leaves Step 2 out on the first block and serves ``W_0`` as ``W_t`` (our first
version: the first transfer output then comes from a random ``Theta``; on ``synthetic:small`` Recall@20
fell from .36 to .05 on that block).

The transfer's start (``theta_init``): from the paper's random ``Theta``, on our data the learned
transfer becomes nearly constant in both inputs (mean Jacobian norms ~0.01-0.03 per unit, user outputs
all close to one vector), so SML ranks like recent popularity (yelp-like on ``synthetic:medium``: test
Recall@20 .299, popularity of the last period .291); ``"pass-hat"`` first fits each network to pass
``w_hat`` through (a departure from the paper), after which Step 1 carries the new period's signal.
"""

from __future__ import annotations

import dataclasses

from jaxrec.methods.sml import transfer
from jaxrec.train.fit import ConfigError, check_fields

FIRST_TASKS = ("initial", "zeros", "skip")
THETA_INITS = ("random", "pass-hat")
VARIANTS = ("sml", "sml-code", "sml-cnn", "sml-fc", "sml-n", "sml-s", "sml-fp")


@dataclasses.dataclass(frozen=True)
class SMLConfig:
  """Configuration of the SML strategy (static: every field is compiled into the update).

  Attributes:
    variant: one of :data:`VARIANTS`.
    filters, hidden: the transfer's convolution filters ``(n1, n2)`` and FC size.
    gelu, detach_hat, eps: transfer details (overridden by ``variant="sml-code"``).
    reps: repetitions of (Step 2, Step 1) per period (Algorithm 2 line 3; paper grid 5..10).
    step1_epochs, step1_batch, step1_lr: Step 1 (learning ``W_hat_t``, Eq. 8-9), lazy Adam.
    l2: ``lambda_1`` of Eq. 8, on the batch rows of ``W_hat``.
    step2_epochs, step2_batch, step2_lr, step2_weight_decay: Step 2 (learning ``Theta``, Eq. 10-11);
      the weight decay is ``lambda_2`` (coupled L2, as ``torch.optim.Adam``).
    num_negatives: uniform negatives per positive (Eq. 13: one).
    freeze_from: ``sml-s``: first block (0-based) whose update leaves the transfer as it is.
    hat_from_output, carry_step1_state: the authors' coded Step 1 (set by ``sml-code``).
    first_task: what the first streamed block's task starts from (see the module docstring).
    theta_init: ``"random"`` (the paper, Algorithm 1 line 1) or ``"pass-hat"``: each transfer network is
      first fitted for ``theta_init_steps`` Adam steps to pass ``w_hat`` through on the pre-trained
      tables (:func:`jaxrec.methods.sml.transfer.fit_pass_through`; ours, see the module docstring).
    passes: passes of sequential training over the training periods (Sec. 3.3: "we can run multiple
      passes of such sequential training on {D_t}"; the paper runs one). Passes before the last run in
      the learner's ``init`` over the warm-up blocks it is given; each ends by restarting the tables
      from the pre-trained model, keeping ``Theta`` and its optimizer state.
    transfer_untouched: pass every row through the transfer (paper, authors' code); False: rows that
      no Step 1 of the period moved keep ``W_{t-1}`` (ours, for periods that touch few rows).
  """

  variant: str = "sml"
  filters: tuple = (10, 5)
  hidden: int = 512
  gelu: str = "erf"
  detach_hat: bool = False
  eps: float = 1e-15
  reps: int = 10
  step1_epochs: int = 1
  step1_batch: int = 1024
  step1_lr: float = 1e-2
  l2: float = 1e-4
  step2_epochs: int = 1
  step2_batch: int = 256
  step2_lr: float = 1e-3
  step2_weight_decay: float = 1e-4
  num_negatives: int = 1
  freeze_from: int = 0
  hat_from_output: bool = False
  carry_step1_state: bool = False
  transfer_untouched: bool = True
  first_task: str = "initial"
  passes: int = 1
  theta_init: str = "random"
  theta_init_steps: int = 2000

  def __post_init__(self):
    check_fields(self, {
        "variant": (VARIANTS, None, False), "hidden": ("int", 1, False),
        "gelu": (transfer.GELUS, None, False), "eps": ("float", 0, False),
        "reps": ("int", 0, False), "step1_epochs": ("int", 1, False), "step1_batch": ("int", 1, False),
        "step1_lr": ("pos", 0, False), "l2": ("float", 0, False), "step2_epochs": ("int", 1, False),
        "step2_batch": ("int", 1, False), "step2_lr": ("pos", 0, False),
        "step2_weight_decay": ("float", 0, False), "num_negatives": ("int", 1, False),
        "freeze_from": ("int", 0, False), "detach_hat": ("bool", None, False),
        "hat_from_output": ("bool", None, False), "carry_step1_state": ("bool", None, False),
        "transfer_untouched": ("bool", None, False), "first_task": (FIRST_TASKS, None, False),
        "passes": ("int", 1, False), "theta_init": (THETA_INITS, None, False),
        "theta_init_steps": ("int", 0, False)})
    if len(tuple(self.filters)) != 2 or min(self.filters) < 1:
      raise ConfigError(type(self).__name__, "filters", f"must be two positive counts, got {self.filters}")
    if self.first_task == "zeros" and (self.variant == "sml-code" or self.eps == 0):
      raise ConfigError(type(self).__name__, "first_task", "'zeros' needs eps > 0 (the product row "
                        "divides by ||W_{-1}|| = 0; sml-code sets eps = 0)")

  def resolved(self) -> "SMLConfig":
    """The config with ``sml-code`` 's overrides applied (what the steps read)."""
    if self.variant != "sml-code":
      return self
    return dataclasses.replace(self, gelu="sigmoid", detach_hat=True, eps=0.0, hat_from_output=True,
                               carry_step1_state=True)

  def transfer_config(self, dim: int) -> transfer.TransferConfig:
    c = self.resolved()
    return transfer.TransferConfig(dim=dim, filters=tuple(c.filters), hidden=c.hidden, gelu=c.gelu,
                                   detach_hat=c.detach_hat, eps=c.eps, cnn=c.variant != "sml-cnn",
                                   fc=c.variant != "sml-fc")
