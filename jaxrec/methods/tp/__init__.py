"""TP: transferrable parameters for long-tailed sequential behaviour (paper 001, KDD 2020).

Gradient alignment (Sec. 3.2: ``k`` inner SGD steps on one user's task each, an outer step toward the
result) plus head/tail adversarial training (Sec. 3.3: a discriminator on the sequence embedding),
applied unchanged to the registry's sequence encoders (the paper's "-TP" models).

* :mod:`.config`: :class:`TPConfig` (paper defaults where given).
* :mod:`.tasks`: per-user tasks and the ``[C, k, S]`` meta-step batches, head labels (20% rule).
* :mod:`.evaluate`: Sec. 4.3's existing/new x head/tail labels and the evaluation broken down by them.
* :mod:`.alignment`: inner chains (``lax.scan`` over ``k``, ``vmap`` over chains), the averaged outer
  direction and Eq. 7's outer step (Algorithm 1's flipped sign discussed there), generic over the
  objective.
* :mod:`.adversary`: the discriminator, Eq. 9-10 with their signs made explicit, the inner objective.
* :mod:`.learner`: the :class:`~jaxrec.train.learner.Learner` (state: encoder, discriminator, both
  outer optimizer states).
* :mod:`.training`: pre-training (optional) then meta-training through
  :func:`jaxrec.train.stages.run_stages`.

Usage::

    from jaxrec.methods import tp
    res = tp.train(tp.TPConfig(k=2, lam=0.1), "sasrec", split.train, valid_queries=valid_q)
    base = tp.train_plain(tp.TPConfig(), "sasrec", split.train, epochs=10, valid_queries=valid_q)
    scores = res.score_fn(res.params, queries, items)        # the registry's ScoreFn
"""

from jaxrec.methods.tp.adversary import Discriminator, discriminator_bce, inner_objective
from jaxrec.methods.tp.alignment import outer_direction, outer_step, sgd_chain
from jaxrec.methods.tp.config import TPConfig
from jaxrec.methods.tp.learner import TPState, outer_optimizer, tp_learner
from jaxrec.methods.tp.evaluate import GROUPS, evaluate_groups, group_labels
from jaxrec.methods.tp.tasks import TaskData, epoch_batches, head_users, prepare, steps_per_epoch
from jaxrec.methods.tp.training import TPResult, build, history_len, plain_learner, train, train_plain

__all__ = [
    "Discriminator", "discriminator_bce", "inner_objective", "outer_direction", "outer_step", "sgd_chain",
    "TPConfig", "TPState", "outer_optimizer", "tp_learner", "TaskData", "epoch_batches", "head_users",
    "GROUPS", "evaluate_groups", "group_labels",
    "prepare", "steps_per_epoch", "TPResult", "build", "history_len", "plain_learner", "train", "train_plain",
]
