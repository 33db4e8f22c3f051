"""MeLON: meta-learned learning rates per (interaction, parameter) for online updates (paper 002, AAAI 2022).

* :mod:`.rows`: the parameters an interaction involves, per-interaction losses/gradients, the selective
  (row-sparse) update and the updated rows read without materialising the tables.
* :mod:`.history`: ``B_last`` (each node's previous interaction) and per-node neighbour reservoirs, strictly
  from the past.
* :mod:`.meta_model`: the meta-model (graph attention interaction representation, parameter-role MLP,
  fused learning rate, forgetting rate; the ablations and the authors' coded variant).
* :mod:`.step`: Algorithm 1's online step (preliminary update, meta-gradient through it, recommender
  update) as one pure jittable function.
* :mod:`.strategy`: the stream strategy (``melon``, ``melon-authors``, ``melon-i``, ``melon-p``,
  ``melon-fo``) registered in :data:`jaxrec.stream.strategies.STRATEGIES`.
* :mod:`.baselines`: Table 2's other update strategies (``eals``, ``mwnet``, ``metasgd``), registered too;
  :mod:`.s2meta`: ``s2meta``.

Usage::

    from jaxrec.methods import melon
    learner = melon.make(env, melon.MelonConfig())        # env: jaxrec.stream.strategies.Env
    state = learner.init(pretrained_params, rng)
    res = jaxrec.stream.loop.run(learner, state, env.data, evaluator, rng=rng)
"""

from jaxrec.methods.melon import history, meta_model, rows, step, strategy
from jaxrec.methods.melon import baselines  # registers eals, mwnet, metasgd
from jaxrec.methods.melon import s2meta  # registers s2meta
from jaxrec.methods.melon.meta_model import MetaConfig
from jaxrec.methods.melon.step import MelonState, StepConfig
from jaxrec.methods.melon.strategy import AUTHORS, VARIANTS, MelonConfig, make

__all__ = ["AUTHORS", "MelonConfig", "MelonState", "MetaConfig", "StepConfig", "VARIANTS", "history", "make",
           "meta_model", "rows", "step", "strategy", "baselines", "s2meta"]
