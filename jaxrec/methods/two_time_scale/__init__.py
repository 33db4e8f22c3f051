"""Two-time-scale (2TS) user representations and their ablations (paper 000, Sections 3 and 5).

One package, split along what a reader looks for:

* :mod:`.model`: :class:`TwoTimeScaleConfig`, parameters, item vectors ``[x_i ; g(f_i)]``, the two cells
  (Eq. 8, 9), the 2TS-Plus query, and the ScoreFn :func:`table_scores`.
* :mod:`.batches`: training data (stage-1 pairs, the inactive/active groups), length buckets, epoch batches.
* :mod:`.training`: the offer-set losses (Eq. 10-12, :func:`jaxrec.models.losses.sampled_softmax`), the
  per-stage learners with frozen keys, and :func:`train` over :func:`jaxrec.train.stages.run_stages`.
* :mod:`.rollout`: the evaluation rollout (Section 5, Figure 4).

Variants (one :class:`TwoTimeScaleConfig`, one code path):

* ``"2ts"`` / ``"2ts-plus"``: CCF (stage 1, Eq. 10), then the two cells with the item representation and
  the active users' ``phi_u`` frozen (stage 2, Eq. 11 + 12); 2TS-Plus scores with ``W^T [h ; x_prev]``.
* ``"ccf"``: stage 1 alone; the query is the static ``phi_u`` for every user (inactive and new included).
* ``"single-stage"`` (2TS-SingleStage, Table 3): every parameter trained jointly on
  ``L_in + L_act + w * L_CCF`` (the CCF term is our reading, see :mod:`.training`).
* ``"2-gru"`` (Table 3): the two-stage pipeline, but active users start from a second learned initial
  embedding ``psi_2`` instead of ``phi_u``.

Usage::

    from jaxrec.methods import two_time_scale as tts
    res = tts.train(tts.TwoTimeScaleConfig(variant="2ts"), split.train, eval_fn=..., workdir=...)
    eq = tts.eval_query_vectors(cfg, res.params, res.data, tts.prepare_eval_sequences([valid, test]), feats)
    table = tts.item_table(cfg, res.params, feats)
    scores = tts.table_scores(table, {"user_vec": eq.user_vec}, items)   # score_fn(params, queries, items)
"""

from jaxrec.methods.two_time_scale.batches import (
    STAGES, TwoTimeScaleData, bucket_width, length_buckets, prepare_training_data, stage_batches,
    steps_per_epoch)
from jaxrec.methods.two_time_scale.model import (
    CELLS, GROUP_KEYS, STAGE1_KEYS, STAGE2_STEPS, VARIANTS, FeatureNet, TwoTimeScaleConfig, cell_step,
    group_rollout, init_params, item_table, item_vectors, rollout, table_scores, trainable_keys)
from jaxrec.methods.two_time_scale.rollout import (
    EvalQueries, EvalSequences, eval_query_vectors, eval_rollout, padded_steps, prepare_eval_sequences,
    user_states)
from jaxrec.methods.two_time_scale.training import (
    TrainResult, ccf_loss, offer_set_loss, offer_set_scores, sample_offer_negatives, single_stage_loss,
    stage2_loss, stage_learner, stage_loss_fn, stage_names, stage_optimizer, train)

# ``tts.rollout`` is the cell rollout of :mod:`.model` (as before the split), not the submodule of the same
# name (importing the submodule above bound the package attribute to it): rebind it.
from jaxrec.methods.two_time_scale.model import rollout  # noqa: E402,F811  # pylint: disable=wrong-import-position

__all__ = ["CELLS", "EvalQueries", "EvalSequences", "FeatureNet", "GROUP_KEYS", "STAGE1_KEYS", "STAGE2_STEPS",
           "STAGES", "TrainResult",
           "TwoTimeScaleConfig", "TwoTimeScaleData", "VARIANTS", "bucket_width", "ccf_loss",
           "cell_step", "eval_query_vectors", "eval_rollout", "group_rollout", "init_params",
           "item_table", "item_vectors", "length_buckets", "offer_set_loss", "offer_set_scores",
           "padded_steps", "prepare_eval_sequences", "prepare_training_data", "rollout",
           "sample_offer_negatives", "single_stage_loss", "stage2_loss", "stage_batches",
           "stage_learner", "stage_loss_fn", "stage_names", "stage_optimizer", "steps_per_epoch",
           "table_scores", "train", "trainable_keys", "user_states"]
