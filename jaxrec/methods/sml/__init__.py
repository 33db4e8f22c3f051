"""SML: sequential meta-learning for periodic retraining (paper 003, Zhang et al., SIGIR 2020).

* :mod:`.transfer`: the transfer network ``f_Theta(w_{t-1}, w_hat_t)`` per row (Eq. 4-7), vmapped.
* :mod:`.config`: :class:`SMLConfig` (hyper-parameters, the authors' coded variant, the ablations).
* :mod:`.steps`: Step 1 (Eq. 8-9, lazy Adam on the touched rows) and Step 2 (Eq. 10-11, first order) as
  pure functions, and the epochs over a padded period.
* :mod:`.strategy`: Algorithms 1-2 as a stream strategy (``Learner`` over period blocks).
* :mod:`.evaluate`: the paper's evaluation: 999 negatives from the items seen so far minus the user's
  history, Recall/NDCG@5/10/20, next to full ranking.
* :mod:`.protocol`: the period presets (Yelp-like, Adressa-like).

Usage::

    from jaxrec.methods import sml
    learner = sml.learner(sml.SMLConfig(), module, data.block_size)     # module: MF, use_bias=False
    res = jaxrec.stream.run(learner, learner.init(params, rng), data, evaluator, rng=rng)

Importing the package registers ``sml`` and its variants in :data:`jaxrec.stream.strategies.STRATEGIES`.
"""

from jaxrec.methods.sml import config, steps, strategy, transfer
from jaxrec.methods.sml.config import VARIANTS, SMLConfig
from jaxrec.methods.sml.strategy import SMLState, learner, params_of, tables_of

strategy.register_variants()

__all__ = ["SMLConfig", "SMLState", "VARIANTS", "config", "learner", "params_of", "steps", "strategy",
           "tables_of", "transfer"]
