r"""MeLON (paper 002) against the shared stream strategies, prequential, for BPR-MF and NCF.

    python -m experiments.melon --dataset=synthetic:small --workdir=runs/melon \
        --config.strategies="('fine-tune','replay','melon','melon-authors')" --config.max_blocks=10

Protocol (paper 002, "Experimental setting" and Appendix): users and items with fewer than
``min_count`` (20) interactions removed (iterative k-core), the log sorted by time (ties in arrival order),
the first ``offline`` (95%) fraction pre-trains the recommender (``pretrain_epochs`` epochs of Adam, the
same start for every strategy), the rest streams in mini-batches of 256: every mini-batch is scored
before any strategy learns from it (1 positive + 99 uniform negatives, the user's earlier items
excluded, and full ranking), then the strategy updates on it. HR and NDCG @5/10/20 are averaged over
the mini-batches (as the paper does); the paired t-test of MeLON against Default (fine-tune) is over the
per-batch HR@5 / NDCG@5 (Table 6). Recommenders with the authors' sizes: ``mf-bpr`` with biases (dim 64,
N(0, 0.01)), ``ncf`` (GMF 64, MLP embeddings 64 per side, four 64-wide layers; our NeuMF layers keep
their biases), both trained with BPR and one uniform negative (the authors' code).

Strategies: any of :data:`jaxrec.stream.strategies.STRATEGIES` (``fine-tune`` is the paper's Default:
Adam 1e-3, weight decay 1e-3, one update per batch; ``retrain``, ``replay``), and MeLON's variants
(:data:`jaxrec.methods.melon.VARIANTS`: ``melon``, ``melon-authors``, ``melon-i``, ``melon-p``, ``melon-fo``),
built with ``config.melon`` (its ``meta``/``order`` replaced by the variant's), and Table 2's other
baselines (:mod:`jaxrec.methods.melon.baselines`: ``eals``, ``mwnet``, ``metasgd``; ``s2meta``; defaults).
Writes ``results.json``
(config, tables, per-batch records with timings), ``ndcg-MODEL.png`` (Fig. 5: NDCG@10 per online batch) and
``time-MODEL.png`` (update seconds per batch); per-strategy median update time per batch in the table
(Table 4).

Protocol preset ``prequential`` (:data:`jaxrec.eval.paper_protocols.PROTOCOLS`: 95% offline / 0.5% online
validation / 4.5% online test): the first ``validation`` online mini-batches (at least two) are the
validation slice; for each strategy every value of its grid (``lr_grid``: the Default's learning rate for
``fine-tune``, ``replay``, ``retrain``, ``eals``; ``meta_lr_grid``: the meta learning rate for MeLON's
variants, ``mwnet``, ``metasgd``, ``s2meta``) streams the validation batches from the pre-trained model,
the best mean HR@5 there wins, and the whole stream (validation + test) is then run with it; the table
reports the test batches only, averaged over ``seeds`` (mean and standard error), and the paired t-tests
of every MeLON variant against Default are over the (seed, test batch) pairs and over the seeds' means
(Table 6). The baselines' own settings are ``--config.eals.*``, ``--config.mwnet.*``,
``--config.metasgd.*``, ``--config.s2meta.*`` (checked: one line naming the field).
Example (Table 2/6 on synthetic:small, 5 seeds)::

    python -m experiments.melon --dataset=synthetic:small --workdir=runs/melon5 \
        --config.models="('mf-bpr',)" --config.strategies="('fine-tune','melon')" \
        --config.seeds="(0,1,2,3,4)" --config.lr_grid="(1e-4,1e-3,1e-2)" --config.meta_lr_grid="(1e-4,1e-3)"
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Optional

from absl import app, flags
import jax
import numpy as np

from experiments import common, configs, plots
from experiments.registry import Experiment, ExperimentResult, RunContext, Table
from jaxrec import io
from jaxrec.data import datasets, preprocess
from jaxrec.eval import paper_protocols
from jaxrec.eval.queries import Queries
from jaxrec.methods import melon as melon_lib
from jaxrec.methods.melon import baselines as baselines_lib
from jaxrec.methods.melon import s2meta as s2meta_lib
from jaxrec.methods import sml as _sml  # noqa: F401  (registers the stream strategies sml, sml-n, ...)
from jaxrec.models import registry
from jaxrec.stream import blocks as blocks_lib
from jaxrec.stream import evaluate as evaluate_lib
from jaxrec.stream import loop as loop_lib
from jaxrec.stream import strategies as strategies_lib
from jaxrec.train import fit as fit_lib

HPARAMS = {"mf-bpr": {"dim": 64, "use_bias": True, "init_scale": 0.01},
           "mf-log": {"dim": 64, "use_bias": True, "init_scale": 0.01},
           "ncf": {"mf_dim": 64, "mlp_layers": (128, 64, 64, 64, 64), "init_scale": 0.01}}
DEFAULT_STRATEGY = strategies_lib.StrategyConfig(steps=1, batch_size=256, num_negatives=1, optimizer="adam",
                                                 learning_rate=1e-3, weight_decay=1e-3, loss="bpr",
                                                 retrain_epochs=2, reservoir_size=10_000, replay_sample=256)
KS = (5, 10, 20)
PROTOCOL = "prequential"  # jaxrec.eval.paper_protocols: 95% offline / 0.5% validation / 4.5% test
_SPLIT = dict(paper_protocols.get(PROTOCOL).split_options)
META_LEARNED = ("mwnet", "metasgd", "s2meta")  # with MeLON's variants: tuned by meta_lr_grid
LR_TUNED = ("fine-tune", "replay", "retrain", "eals")  # the Default's optimizer: tuned by lr_grid


@dataclasses.dataclass(frozen=True)
class MelonExperimentConfig:
  """The binary's configuration (``--config.FIELD``).

  Attributes:
    models: registered user models (sizes from :data:`HPARAMS`).
    strategies: strategy names (shared ones and MeLON's variants).
    offline: offline (pre-training) fraction of the stream.
    min_count: iterative k-core on users and items (20 in the paper; 0: none).
    pretrain_epochs: epochs of the offline pre-training of the recommender.
    max_blocks: stream only the first blocks (0: all).
    eval_negatives: sampled negatives per interaction (99).
    full_ranking: also rank against every item.
    checkpoint_every: blocks between checkpoints.
    strategy: the shared strategies' hyper-parameters (MeLON reads batch_size, num_negatives, loss).
    melon: MeLON's own hyper-parameters.
    validation: online validation fraction of the log after the offline prefix (the ``prequential``
      protocol's 0.5%), rounded to whole mini-batches (at least two); the test is the rest of the stream.
    seeds: seeds of the model initialisation, pre-training, strategies and sampled negatives (empty:
      ``--seed`` only); the data come from ``--seed``.
    lr_grid: learning rates tried for the strategies that step with the Default's optimizer
      (:data:`LR_TUNED`: ``fine-tune`` = Default, ``replay``, ``retrain``, ``eals``), chosen on validation
      HR@5 (empty: ``strategy.learning_rate``); other strategies (``sml``) run with their own defaults.
    meta_lr_grid: meta learning rates tried for MeLON's variants, ``mwnet``, ``metasgd`` and ``s2meta``,
      chosen the same way (empty: each config's own).
    eals, mwnet, metasgd, s2meta: the Table 2 baselines' hyper-parameters.
    mf_bias: MF with user/item/global biases (the authors' BPR-MF); False for SML's row (its transfer,
      Eq. 12, is defined on bias-free MF: ``sml`` refuses a biased MF).
  """

  models: tuple = ("mf-bpr", "ncf")
  strategies: tuple = ("fine-tune", "retrain", "replay", "melon", "melon-authors")
  offline: float = _SPLIT["offline"]
  min_count: int = 20
  pretrain_epochs: int = 10
  max_blocks: int = 0
  eval_negatives: int = 99
  full_ranking: bool = True
  checkpoint_every: int = 50
  strategy: strategies_lib.StrategyConfig = DEFAULT_STRATEGY
  melon: melon_lib.MelonConfig = melon_lib.MelonConfig()
  validation: float = _SPLIT["valid"]
  seeds: tuple = ()
  lr_grid: tuple = ()
  meta_lr_grid: tuple = ()
  eals: baselines_lib.EalsConfig = baselines_lib.EalsConfig()
  mwnet: baselines_lib.MetaLearnedConfig = baselines_lib.MetaLearnedConfig()
  metasgd: baselines_lib.MetaLearnedConfig = baselines_lib.MetaLearnedConfig()
  s2meta: s2meta_lib.S2MetaConfig = s2meta_lib.S2MetaConfig()
  mf_bias: bool = True


def check(config: MelonExperimentConfig) -> None:
  """One ``ValueError`` line naming the field for bad input."""
  bad = [m for m in config.models if m not in HPARAMS]
  if bad:
    raise ValueError(f"--config.models: {bad} not supported; MeLON runs on {sorted(HPARAMS)}")
  unknown = [s for s in config.strategies if s not in strategies_lib.STRATEGIES]
  if unknown:
    raise ValueError(f"--config.strategies: unknown {unknown}; "
                     f"registered: {sorted(strategies_lib.STRATEGIES)}")
  if not 0.0 < config.offline < 1.0:
    raise ValueError(f"--config.offline must be in (0, 1), got {config.offline}")
  if config.min_count < 0 or config.max_blocks < 0 or config.pretrain_epochs < 0:
    raise ValueError("--config.min_count, --config.max_blocks and --config.pretrain_epochs must be >= 0")
  if not 0.0 <= config.validation < 1.0 - config.offline:
    raise ValueError(f"--config.validation must be in [0, 1 - offline), got {config.validation}")
  for field in ("lr_grid", "meta_lr_grid"):
    grid = getattr(config, field)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in grid):
      raise ValueError(f"--config.{field}: every value must be a number > 0, got {grid}")
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in config.seeds):
    raise ValueError(f"--config.seeds: every seed must be an integer >= 0, got {config.seeds}")


def load(dataset: str, config: MelonExperimentConfig, seed: int, cache_dir: Optional[str]):
  log = datasets.load_dataset(dataset, seed=seed, cache_dir=cache_dir)
  if config.min_count:
    log = preprocess.compact(preprocess.k_core(log, config.min_count, config.min_count))
  return log


def _truncate(data: blocks_lib.Blocks, n: int) -> blocks_lib.Blocks:
  if not n or n >= len(data):
    return data
  return dataclasses.replace(data, starts=data.starts[:n], ends=data.ends[:n])


def grid_for(name: str, config: MelonExperimentConfig) -> tuple:
  """The values of ``name``'s tuned hyper-parameter (``(None,)``: nothing to choose)."""
  if name in melon_lib.VARIANTS or name in META_LEARNED:
    return tuple(config.meta_lr_grid) or (None,)
  return (tuple(config.lr_grid) if name in LR_TUNED else ()) or (None,)  # others (e.g. sml): untuned


def make_strategy(name: str, env: strategies_lib.Env, config: MelonExperimentConfig, value=None):
  """``(learner, jittable)`` for ``name`` with its tuned hyper-parameter set to ``value`` (None: the
  config's): the meta learning rate of the meta-learned strategies, else the Default's learning rate."""
  meta = {} if value is None else {"meta_learning_rate": float(value)}
  if name in melon_lib.VARIANTS:
    v = melon_lib.VARIANTS[name]
    return melon_lib.make(env, dataclasses.replace(config.melon, meta=v.meta, order=v.order, **meta)), True
  if name in META_LEARNED:
    return strategies_lib.get(name).make(env, dataclasses.replace(getattr(config, name), **meta)), True
  if value is not None:
    env = dataclasses.replace(env, config=dataclasses.replace(env.config, learning_rate=float(value)))
  if name == "eals":
    return baselines_lib.eals(env, config.eals), True
  d = strategies_lib.get(name)
  return d.make(env), d.jittable


def validation_blocks(config: MelonExperimentConfig, num_rows: int, num_blocks: int) -> int:
  """Mini-batches of the online validation slice: ``validation`` of the log, at least two when > 0 (the
  first online batch is scored before any update, so its score is the same for every setting: one
  validation batch could not tell settings apart; on synthetic:small 0.5% is < 1 batch)."""
  if not config.validation:
    return 0
  n = max(2, int(round(config.validation * num_rows / config.strategy.batch_size)))
  if n >= num_blocks:
    raise ValueError(f"--config.validation: {n} validation batches leave no test batch of {num_blocks}")
  return n


def mean_se(xs) -> tuple:
  xs = np.asarray(xs, np.float64)
  se = float(xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else float("nan")
  return float(xs.mean()), se


def batch_mean(records: list, key: str) -> float:
  return float(np.mean([r[key] for r in records])) if records else float("nan")


def paired_t(records_a: list, records_b: list, key: str) -> dict:
  """Paired t-test over the batches (``a`` minus ``b``)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  a = np.asarray([r[key] for r in records_a])
  b = np.asarray([r[key] for r in records_b])
  if len(a) < 2 or np.allclose(a, b):
    return {"mean_diff": float(np.mean(a - b)) if len(a) else float("nan"), "t": float("nan"),
            "p": float("nan"), "n": int(len(a))}
  t, p = stats.ttest_rel(a, b)
  return {"mean_diff": float(np.mean(a - b)), "t": float(t), "p": float(p), "n": int(len(a))}


METRICS = [f"HR@{k}" for k in KS] + [f"NDCG@{k}" for k in KS]


CHOICE = "validation.json"


def _saved_choice(wd: Optional[str]):
  """``(value, {value: validation HR@5})`` chosen for this stream by an earlier, killed run, or None.

  The choice is saved as ``validation.json`` beside the stream's checkpoints before its test stream
  starts, so a rerun resumes the stream without redoing the grid. A stream started before this file
  existed has only its ``run_config.json``, whose ``value`` is the choice (the stream loop refuses to
  resume under another config); its validation scores were not kept (``{}``)."""
  if not wd:
    return None
  path = os.path.join(wd, CHOICE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    return saved["value"], {v: score for v, score in saved["validation HR@5"]}
  path = os.path.join(wd, "run_config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)["value"], {}
  return None


def _stream(learner, jittable, params, data, evaluator, rng):
  """A validation stream (no checkpoints)."""
  state = jax.block_until_ready(learner.init(params, rng))
  return loop_lib.run(learner, state, data, evaluator, rng=rng, config=loop_lib.StreamConfig(jit=jittable))


def run(config: MelonExperimentConfig, dataset: str, *, seed: int = 0, workdir: Optional[str] = None,
        cache_dir: Optional[str] = None) -> dict:
  """The protocol (module docstring) for every model, seed and strategy; returns the results dict.

  Per model and seed: pre-train once; per strategy and value of its grid (:func:`grid_for`), stream the
  validation mini-batches and keep the value with the best mean HR@5 there (ties: the first); then stream
  validation + test with it and report the test mini-batches only."""
  check(config)
  log = load(dataset, config, seed, cache_dir)
  data = _truncate(blocks_lib.from_prequential(log, config.strategy.batch_size, config.offline),
                   config.max_blocks)
  n_val = validation_blocks(config, len(log), len(data))
  val_data = _truncate(data, n_val)
  seeds = tuple(config.seeds) or (seed,)
  everything = Queries.from_log(log, [log])
  negatives = fit_lib.capped_negatives(everything, log.num_items, config.eval_negatives, "melon")
  sampled = f"sampled{negatives}"
  rows, streams, tests, lr_stats, per_seed, chosen = [], {}, {}, {}, [], {}
  test_recs = {}  # (model, name) -> {seed: test records}
  for model in config.models:
    spec = registry.get(model)
    no_bias = model.startswith("mf") and not config.mf_bias
    hp = dict(HPARAMS[model], **({"use_bias": False} if no_bias else {}))
    module = spec.make(log.num_users, log.num_items, **hp)
    env = strategies_lib.Env(model, module, config.strategy, data)
    streams[model] = {}
    pretrain_s = {}
    for sd in seeds:
      init_key, pre_key, stream_key = jax.random.split(jax.random.PRNGKey(sd), 3)
      t0 = time.perf_counter()
      params = jax.block_until_ready(strategies_lib.pretrain(env, strategies_lib.init_params(env, init_key),
                                                             pre_key, config.pretrain_epochs))
      pretrain_s[sd] = time.perf_counter() - t0
      evaluator = evaluate_lib.BlockEvaluator(spec.score_fn(module), data, num_negatives=negatives, seed=sd,
                                              full=config.full_ranking, ks=KS)
      for name in config.strategies:
        grid = grid_for(name, config)
        wd = os.path.join(workdir, "streams", model, name, f"seed{sd}") if workdir else None
        saved = _saved_choice(wd) if len(grid) > 1 else None
        if saved is not None:  # a killed run chose it: its test stream resumes below
          best, val_scores = saved
        else:
          val_scores = {}
          if len(grid) > 1:
            for v in grid:
              learner, jittable = make_strategy(name, env, config, v)
              res = _stream(learner, jittable, params, val_data, evaluator, stream_key)
              val_scores[v] = batch_mean(res.records, f"{sampled}/HR@5")
          best = max(val_scores, key=val_scores.get) if val_scores else grid[0]
          if wd and len(grid) > 1:
            io.atomic_write_json(os.path.join(wd, CHOICE), {"value": best,
                                                            "validation HR@5": list(val_scores.items())})
        chosen.setdefault(f"{model}/{name}", {})[str(sd)] = {"value": best, "validation HR@5": val_scores}
        learner, jittable = make_strategy(name, env, config, best)
        run_config = {"dataset": dataset, "seed": sd, "model": model, "strategy": name, "value": best,
                      "config": {k: v for k, v in configs.to_dict(config).items()
                                 if k not in ("models", "strategies", "checkpoint_every", "max_blocks",
                                              "seeds")}}
        t0 = time.perf_counter()
        state = jax.block_until_ready(learner.init(params, stream_key))
        init_s = time.perf_counter() - t0
        res = loop_lib.run(learner, state, data, evaluator, rng=stream_key, workdir=wd,
                           config=loop_lib.StreamConfig(checkpoint_every=config.checkpoint_every,
                                                        jit=jittable),
                           run_config=run_config)
        recs = [dict(r, validation=r["block"] < n_val) for r in res.records]
        if sd == seeds[0]:
          streams[model][name] = recs
          if name == "melon" and workdir:
            lr_stats[model] = lr_matrix(env, dataclasses.replace(config, melon=dataclasses.replace(
                config.melon, **({} if best is None else {"meta_learning_rate": float(best)}))),
                res.state, data, workdir, model)
        test = [r for r in recs if not r["validation"]]
        test_recs.setdefault((model, name), {})[sd] = test
        ups = [r["update_seconds"] for r in recs[1:]] or [r["update_seconds"] for r in recs]
        one = {"model": model, "strategy": name, "seed": sd, "value": best,
               **{m: batch_mean(test, f"{sampled}/{m}") for m in METRICS},
               "ms/batch (median)": 1000 * float(np.median(ups)), "init s": init_s,
               "pretrain s": pretrain_s[sd]}
        if config.full_ranking:
          one["full NDCG@10"] = batch_mean(test, "full/NDCG@10")
          one["full HR@10"] = batch_mean(test, "full/HR@10")
        per_seed.append(one)
    for name in config.strategies:
      mine = [r for r in per_seed if r["model"] == model and r["strategy"] == name]
      row = {"model": model, "strategy": name, "seeds": len(mine)}
      for m in METRICS + (["full HR@10", "full NDCG@10"] if config.full_ranking else []):
        row[m], se = mean_se([r[m] for r in mine])
        if len(mine) > 1 and m in ("HR@5", "HR@10", "NDCG@5", "NDCG@10"):
          row[f"{m} s.e."] = se
      values = sorted({str(r["value"]) for r in mine})
      row["chosen"] = ",".join(values)
      for k in ("ms/batch (median)", "init s", "pretrain s"):
        row[k] = float(np.median([r[k] for r in mine]))
      rows.append(row)
    if "fine-tune" in config.strategies:
      for name in config.strategies:
        if name in melon_lib.VARIANTS:
          a, b = test_recs[(model, name)], test_recs[(model, "fine-tune")]
          t = {}
          for m in ("HR@5", "NDCG@5", "NDCG@10"):
            key = f"{sampled}/{m}"
            # Over the (seed, batch) pairs of the test batches, and over the seeds' means (Table 6).
            t[m] = paired_t(sum((a[s] for s in seeds), []), sum((b[s] for s in seeds), []), key)
            if len(seeds) > 1:
              t[f"{m} over seeds"] = paired_t([{key: batch_mean(a[s], key)} for s in seeds],
                                              [{key: batch_mean(b[s], key)} for s in seeds], key)
          tests[f"{model}: {name} vs fine-tune"] = t
  test_rows = int(sum(data.ends[n_val:] - data.starts[n_val:])) if len(data) > n_val else 0
  return {"dataset": dataset, "seed": seed, "seeds": list(seeds), "protocol": PROTOCOL,
          "config": configs.to_dict(config), "eval_negatives": negatives,
          "num_users": log.num_users, "num_items": log.num_items, "interactions": len(log),
          "num_blocks": len(data), "validation_blocks": n_val, "test_blocks": len(data) - n_val,
          "test_rows": test_rows, "block_size": data.block_size, "offline_rows": data.offline_end,
          "stream_rows": int(data.sizes().sum()), "table": rows, "per_seed": per_seed, "chosen": chosen,
          "paired_t": tests, "lr_matrix": lr_stats, "streams": streams}


def lr_matrix(env, config: MelonExperimentConfig, state, data, workdir: str, model: str) -> dict:
  """Fig. 4: MeLON's learning rates of the last online batch's (interaction, parameter) pairs (user row
  and positive item row), at the end of the stream; saved as ``lr-matrix-MODEL.npy``. Returns its mean,
  spread and the singular-value ratio ``s2 / s1`` (0 for a rank-1, one-directional matrix)."""
  cfg = melon_lib.strategy.step_config(env, config.melon)
  t = len(data) - 1
  block = {k: jax.numpy.asarray(v) for k, v in data.block(t).items() if k != "end"}
  w = np.asarray(jax.jit(functools.partial(melon_lib.step.learning_rate_matrix, cfg))(
      state, block, jax.random.PRNGKey(0)))[np.asarray(block["mask"])]
  np.save(os.path.join(workdir, f"lr-matrix-{model}.npy"), w)
  s = np.linalg.svd(w, compute_uv=False)
  return {"batch": t, "shape": list(w.shape), "mean": float(w.mean()), "std": float(w.std()),
          "row_mean_std": float(w.mean(1).std()), "col_mean_std": float(w.mean(0).std()),
          "s2_over_s1": float(s[1] / s[0]) if len(s) > 1 and s[0] > 0 else 0.0}


def _lr_figure(path_npy: str, path_png: str, title: str) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  w = np.load(path_npy)
  fig, axes = plt.subplots(2, 2, figsize=(8, 6),
                           gridspec_kw={"width_ratios": [20, 1], "height_ratios": [1, 8]})
  axes[0, 0].plot(w.mean(0))
  axes[0, 0].set_title(title, fontsize=9)
  axes[0, 0].set_xlim(0, w.shape[1] - 1)
  axes[0, 1].axis("off")
  im = axes[1, 0].imshow(w, aspect="auto", cmap="viridis", interpolation="nearest")
  axes[1, 0].set_xlabel("parameter (user row | positive item row)")
  axes[1, 0].set_ylabel("interaction")
  axes[1, 1].plot(w.mean(1), np.arange(w.shape[0]))
  axes[1, 1].invert_yaxis()
  fig.colorbar(im, ax=axes[1, 0])
  return plots.save(fig, path_png)


def figures(results: dict, workdir: str) -> list[str]:
  """Fig. 5 (NDCG@10 per online batch) and the update time per batch, one line per strategy."""
  out = []
  sampled = f"sampled{results['eval_negatives']}"
  ds = datasets.short_name(results["dataset"])
  for model, streams in results["streams"].items():
    xs = lambda recs: [r["block"] for r in recs]  # noqa: E731
    metric = {n: (xs(r), [x[f"{sampled}/NDCG@10"] for x in r]) for n, r in streams.items()}
    times = {n: (xs(r)[1:], [x["update_seconds"] for x in r][1:]) for n, r in streams.items()}
    out.append(plots.line_plot(metric, os.path.join(workdir, f"ndcg-{model}.png"), xlabel="online batch",
                               ylabel=f"NDCG@10 ({sampled})", title=f"Per-batch NDCG@10, {model}, {ds}"))
    out.append(plots.line_plot(times, os.path.join(workdir, f"time-{model}.png"), xlabel="online batch",
                               ylabel="update seconds", title=f"Update time per batch, {model}, {ds}"))
    npy = os.path.join(workdir, f"lr-matrix-{model}.npy")
    if os.path.exists(npy):
      out.append(_lr_figure(npy, os.path.join(workdir, f"lr-matrix-{model}.png"),
                            f"MeLON learning rates, last online batch, {model}, {ds} (top/right: means)"))
  return out


def command_for(dataset: str, seed: int, config: MelonExperimentConfig, workdir: str) -> str:
  return common.command_line("experiments.melon", {
      "dataset": dataset, "seed": seed, "workdir": workdir,
      **configs.overrides(config, MelonExperimentConfig())})


# -- the main job's entry ------------------------------------------------------------------------------


def quick_config(suite: str) -> MelonExperimentConfig:
  """Quick: synthetic:small, mf-bpr, Default vs MeLON, <= 10 batches (both models with replay took 321 s
  wall / 148 s CPU under a load average of ~10; this one is meant to stay near 60 s on 2 quiet cores).
  Full: every shared strategy, MeLON, its authors' variant and ablations, the whole stream."""
  if suite == "quick":
    return MelonExperimentConfig(models=("mf-bpr",), strategies=("fine-tune", "melon"), pretrain_epochs=3,
                                 max_blocks=10, full_ranking=False)
  return MelonExperimentConfig(strategies=("fine-tune", "retrain", "replay", "eals", "mwnet", "metasgd",
                                           "s2meta", "melon", "melon-authors", "melon-i", "melon-p",
                                           "melon-fo"))


def _experiment(ctx: RunContext) -> ExperimentResult:
  config = quick_config(ctx.suite)
  sets = ["synthetic:small"] if ctx.suite == "quick" else list(ctx.datasets)
  tables, figs, out = [], [], {}
  for ds in sets:
    wd = os.path.join(ctx.workdir, datasets.short_name(ds))
    res = run(config, ds, seed=ctx.seed, workdir=wd, cache_dir=ctx.cache_dir)
    out[ds] = {k: v for k, v in res.items() if k != "streams"}
    cmd = command_for(ds, ctx.seed, config, f"runs/melon/{datasets.short_name(ds)}")
    rows = [dict(r, command=cmd) for r in res["table"]]
    caption = (f"Prequential mini-batches of 256 after {res['offline_rows']} offline rows: "
               f"{res['validation_blocks']} validation + {res['test_blocks']} test batches (test reported; "
               f"seeds {res['seeds']}); HR/NDCG over 1 positive + {res['eval_negatives']} uniform "
               "negatives (the user's earlier items excluded), averaged over batches; ms/batch = median "
               "update time.")
    tables.append(Table(f"MeLON vs stream strategies ({datasets.short_name(ds)})", common.table_columns(rows),
                        rows, caption=caption))
    figs += figures(res, wd)
  return ExperimentResult(tables=tables, figures=figs, results=out)


EXPERIMENT = Experiment(name="melon", title="MeLON: meta-learned online updates", run=_experiment, order=62)


@common.friendly_errors
def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  cfg = configs.value(_CONFIG)
  workdir = FLAGS.workdir or "runs/melon"
  os.makedirs(workdir, exist_ok=True)
  try:
    results = run(cfg, FLAGS.dataset, seed=FLAGS.seed, workdir=workdir, cache_dir=FLAGS.cache_dir)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  results["command"] = common.this_command()
  results["figures"] = figures(results, workdir)
  path = common.write_results(workdir, results)
  print(f"{results['num_blocks']} batches of <= {results['block_size']} after {results['offline_rows']} "
        f"offline rows ({results['num_users']} users, {results['num_items']} items)")
  print(f"validation: {results['validation_blocks']} batches; test: {results['test_blocks']} batches "
        f"({results['test_rows']} rows); seeds {results['seeds']}")
  for r in results["table"]:
    se = lambda m, r=r: f"±{r[m + ' s.e.']:.4f}" if m + " s.e." in r else ""  # noqa: E731
    print(f"{r['model']:7s} {r['strategy']:14s} HR@5={r['HR@5']:.4f}{se('HR@5')} HR@10={r['HR@10']:.4f} "
          f"NDCG@5={r['NDCG@5']:.4f} NDCG@10={r['NDCG@10']:.4f}{se('NDCG@10')}  "
          f"{r['ms/batch (median)']:.1f} ms/batch  chosen={r['chosen']}")
  for name, t in results["paired_t"].items():
    print(name, json.dumps(t))
  print(f"wrote {path}")


def define_flags():
  global _CONFIG  # pylint: disable=global-statement
  common.define_data_flags("stream", None, ["stream"])
  _CONFIG = configs.define(MelonExperimentConfig())


_CONFIG = None

if __name__ == "__main__":
  define_flags()
  app.run(main)
