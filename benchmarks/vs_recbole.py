"""jaxrec side by side with RecBole 1.2.1: same data, same protocol, same hyper-parameters, one run.

Run (first ``bash benchmarks/recbole_env.sh``, which makes ``.venv-recbole/`` with torch and RecBole)::

    nice -n 10 python -m benchmarks.vs_recbole --workdir=runs/vs_recbole \\
        --models=bpr,neumf,gru4rec,sasrec --seeds=0,1,2 --max_epochs=gru4rec=2,sasrec=1

What runs. Each (library, model, seed) is one fresh subprocess with 2 threads and
``OMP_WAIT_POLICY=PASSIVE`` (``--omp_wait_policy``): RecBole in the ``--recbole_python`` interpreter
(its own venv; this file's RecBole part imports only the standard library, torch and recbole), jaxrec
in this one. Its result is ``WORKDIR/runs/LIB-MODEL-seedS.json``,
written atomically; a run whose file exists with the same settings is skipped, so a long job can be
stopped and started again, or split (``--libraries``, ``--models``, ``--seeds``). ``--report_only``
re-renders ``WORKDIR/report.md``, ``results.json`` and ``vs_recbole.png`` from what is there.

Data. ML-100K as RecBole ships it (``recbole/dataset_example/ml-100k/ml-100k.inter`` of the
``recbole==1.2.1`` wheel, which :mod:`jaxrec.data.ml100k` caches): jaxrec reads it through
``jaxrec.data.datasets.load_dataset("ml-100k")``; RecBole reads the same member, extracted into
``WORKDIR/data/ml-100k/`` (its sha256 is recorded). Every rating is a positive, no filtering.

Protocols (RecBole's defaults, :mod:`jaxrec.eval.paper_protocols`):

* general models (BPR, NeuMF): ``recbole-random-811``: each user's rows shuffled and cut 8/1/1
  (``RS``, ``order: RO``, ``group_by: user``), full ranking excluding the user's training items, one
  ranking per user whose held-out items are one ground truth: Recall@10, NDCG@10;
* sequential models (GRU4Rec, SASRec; CE loss over all items): ``recbole-leave-one-out``: each
  user's last row the test, the one before it the validation (``LS: valid_and_test``, ``order: TO``,
  ties in the file's order), the last 50 rows as input, full ranking with nothing excluded: Hit@10,
  NDCG@10.

RecBole's random shuffle comes from torch and jaxrec's from numpy, so the two random 8/1/1 splits are
the same rule with different draws (the report checks that every user's part sizes agree); the
leave-one-out split is deterministic and the report checks that both libraries hold out the same rows
with the same input histories.

Hyper-parameters: RecBole's defaults (``properties/overall.yaml`` and ``properties/model/*.yaml``) on
both sides: Adam, learning rate 1e-3, no weight decay, no clipping; batch 2048 (NeuMF, pointwise with one
negative: 1024 positives + 1024 negatives, as RecBole's ``TrainDataLoader`` divides the batch); one
uniform negative excluding the user's training items (BPR, NeuMF); up to 300 epochs (or the
``--max_epochs`` cap), validation every epoch on MRR@10 with RecBole's ``stopping_step: 10`` (stop after
11 evaluations without improvement: jaxrec ``patience=11``); the best validation state is tested.
Models: BPR dim 64 (initial scale 0.04, near RecBole's xavier_normal_ std); NeuMF GMF 64, MLP
64 + 64 -> 128 -> 64 (RecBole adds dropout 0.1 in the MLP, which jaxrec's NeuMF does not have);
GRU4Rec embedding 64, hidden 128, embedding dropout 0.3; SASRec 2 blocks, 2 heads, hidden 64, dropout
0.5, 50 positions (RecBole: post-norm blocks with a 256-wide GELU feed-forward; jaxrec: the SASRec
authors' pre-norm blocks with a 64-wide ReLU one). jaxrec's
sequential models run twice: ``jaxrec`` trains as RecBole does, one example per target with its last
50 rows as input (batches of 2048 examples), and ``jaxrec-allpos`` as jaxrec's registry trains them,
every position of a 50-target chunk at once (batches of 40 chunks, ~2000 targets): the same targets
per epoch with 1/50 of the encoder passes.

Timing. Both libraries: wall time of each epoch's training (data preparation included, evaluation
excluded) and its process CPU time (all threads; less sensitive to other jobs on the machine), the
median over epochs 2.. (the first, with jaxrec's compilation, is reported apart), and
the wall time from the start of training to the end of the best validation (training, every
validation and, for RecBole, its checkpoint writes). RecBole runs with autograd anomaly mode off
(importing its sequential models switches it on for the process: ``model/sequential_recommender/
sine.py``), its fairest setting; its best checkpoint is reloaded with ``weights_only=False``
(torch >= 2.6 refuses RecBole's pickled config otherwise). jaxrec's models are validated and tested by
``jaxrec.eval.protocols.evaluate``, which scores each user once for grouped (8/1/1) queries, as RecBole
does.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# model -> how each library names and configures it
MODELS = {
    # init_scale: RecBole's BPR initialises both tables with xavier_normal_ (std sqrt(2 / (64 + rows)):
    # 0.045 for 943 users, 0.034 for 1682 items); jaxrec's default normal(0.1) learned slower and stopped
    # lower in this benchmark's first run (see the report)
    "bpr": {"recbole": "BPR", "jaxrec": "mf-bpr", "kind": "general",
            "hparams": {"dim": 64, "init_scale": 0.04},
            "batch_size": 2048, "loss": "bpr"},
    "neumf": {"recbole": "NeuMF", "jaxrec": "ncf", "kind": "general",
              "hparams": {"mf_dim": 64, "mlp_layers": (128, 128, 64), "init_scale": 0.01, "dropout": 0.1},
              "batch_size": 1024, "loss": "log"},
    "gru4rec": {"recbole": "GRU4Rec", "jaxrec": "gru4rec", "kind": "sequential",
                "hparams": {"dim": 64, "hidden": 128, "dropout": 0.3}, "batch_size": 2048,
                "loss": "full_softmax"},
    "sasrec": {"recbole": "SASRec", "jaxrec": "sasrec", "kind": "sequential",
               "hparams": {"dim": 64, "max_len": 50, "num_blocks": 2, "num_heads": 2, "dropout": 0.5},
               "batch_size": 2048, "loss": "full_softmax"},
}
# what the driver runs: RecBole; jaxrec trained as RecBole trains (sequential models: one example per
# target); jaxrec's sequential models trained on all positions of 50-row chunks (general models: skipped)
LIBRARIES = ("recbole", "jaxrec", "jaxrec-allpos")
PROTOCOL = {"general": "recbole-random-811", "sequential": "recbole-leave-one-out"}
ACCURACY = {"general": ("Recall@10", "NDCG@10"), "sequential": ("HR@10", "NDCG@10")}
RECBOLE_KEYS = {"Recall@10": "recall@10", "NDCG@10": "ndcg@10", "HR@10": "hit@10", "MRR@10": "mrr@10"}
EPOCHS = 300  # RecBole's default `epochs`
STOPPING_STEP = 10  # RecBole's default `stopping_step`
LEARNING_RATE = 1e-3
MAX_HISTORY = 50  # RecBole's MAX_ITEM_LIST_LENGTH
INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"


# -- shared helpers (standard library only: the RecBole worker imports this file) ------------------


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as JSON atomically (temporary file + ``os.replace``)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def loadavg() -> float:
  """The 1-minute load average (other jobs on the machine slow every wall-clock figure)."""
  try:
    with open("/proc/loadavg") as f:
      return float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return float("nan")


def median_epoch(seconds: list) -> float:
  """Median epoch time over epochs 2.. (all epochs when there is only one)."""
  rest = seconds[1:] or seconds
  return float(statistics.median(rest)) if rest else float("nan")


def timing_summary(train_seconds: list, train_cpu: list, eval_end: list, best_epoch: int) -> dict:
  """Per-epoch and time-to-best figures from the epochs' training times (wall and process CPU, all
  threads) and the validations' ends (wall, from the start of training)."""
  return {"epoch_seconds": [float(s) for s in train_seconds],
          "epoch_cpu_seconds": [float(s) for s in train_cpu],
          "first_epoch_seconds": float(train_seconds[0]) if train_seconds else float("nan"),
          "median_epoch_seconds": median_epoch(train_seconds),
          "median_epoch_cpu_seconds": median_epoch(train_cpu),
          "seconds_to_best_valid": float(eval_end[best_epoch]) if eval_end else float("nan"),
          "total_seconds": float(eval_end[-1]) if eval_end else float("nan")}


# -- RecBole worker (runs in the RecBole venv) ------------------------------------------------------


def run_recbole(args) -> dict:
  """Trains and tests one RecBole model as ``recbole.quick_start.run_recbole`` does, timed per epoch."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  import recbole  # pylint: disable=import-outside-toplevel
  from recbole.config import Config  # pylint: disable=import-outside-toplevel
  from recbole.data import create_dataset, data_preparation  # pylint: disable=import-outside-toplevel
  from recbole.utils import get_model, get_trainer, init_seed  # pylint: disable=import-outside-toplevel

  m = MODELS[args.model]
  run_dir = os.path.abspath(args.out + ".d")
  os.makedirs(run_dir, exist_ok=True)
  os.chdir(run_dir)  # RecBole writes log_tensorboard/ into the working directory
  config_dict = {"data_path": os.path.abspath(args.data_dir),
                 "checkpoint_dir": os.path.join(run_dir, "saved"),
                 "use_gpu": False, "seed": args.seed, "reproducibility": True, "show_progress": False,
                 "epochs": args.epochs, "log_wandb": False, "state": "WARNING"}
  if m["kind"] == "sequential":
    config_dict["train_neg_sample_args"] = None  # CE loss over all items (RecBole refuses sampling)
  sys.argv = sys.argv[:1]  # RecBole's Config also reads --key=value from the command line (ours)
  config = Config(model=m["recbole"], dataset="ml-100k", config_dict=config_dict)
  t_data = time.perf_counter()
  init_seed(config["seed"], config["reproducibility"])
  dataset = create_dataset(config)
  train_data, valid_data, test_data = data_preparation(config, dataset)
  data_seconds = time.perf_counter() - t_data
  if args.dump_split:
    _dump_recbole_split(args.dump_split, train_data, valid_data, test_data, m["kind"], np)
  init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
  model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
  anomaly_on_import = bool(torch.is_anomaly_enabled())
  torch.autograd.set_detect_anomaly(args.anomaly)
  trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

  train_seconds, train_cpu, eval_end, valid = [], [], [], []
  t0 = [None]
  train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch  # pylint: disable=protected-access

  def timed_train(*a, **k):
    start, cpu = time.perf_counter(), time.process_time()
    if t0[0] is None:
      t0[0] = start
    out = train_epoch(*a, **k)
    train_seconds.append(time.perf_counter() - start)
    train_cpu.append(time.process_time() - cpu)
    print(f"recbole {args.model} seed {args.seed} epoch {len(train_seconds) - 1}: "
          f"{train_seconds[-1]:.2f} s", flush=True)
    return out

  def timed_valid(*a, **k):
    score, result = valid_epoch(*a, **k)
    valid.append({"score": float(score), **{k2: float(v) for k2, v in result.items()}})
    return score, result

  def callback(epoch_idx, valid_score):
    del epoch_idx, valid_score
    eval_end.append(time.perf_counter() - t0[0])
    valid[-1]["best"] = trainer.cur_step == 0  # early_stopping reset it: an update (value >= best)

  trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid  # pylint: disable=protected-access
  best_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False,
                              callback_fn=callback)
  best_epoch = max(i for i, v in enumerate(valid) if v.get("best"))
  # Trainer.evaluate(load_best_model=True) calls torch.load(weights_only=True) on torch >= 2.6, which
  # refuses the pickled Config in RecBole's checkpoint: load it here with weights_only=False.
  ckpt = torch.load(trainer.saved_model_file, map_location=config["device"], weights_only=False)
  model.load_state_dict(ckpt["state_dict"])
  model.load_other_parameter(ckpt.get("other_parameter"))
  test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
  names = ACCURACY[m["kind"]] + ("MRR@10",)
  return {
      "library": "recbole", "model": args.model, "seed": args.seed,
      "versions": {"recbole": recbole.__version__, "torch": torch.__version__, "numpy": np.__version__,
                   "threads": torch.get_num_threads()},
      "anomaly_mode_on_import": anomaly_on_import, "anomaly_mode": bool(torch.is_anomaly_enabled()),
      "data_seconds": data_seconds, "epochs_run": len(train_seconds), "best_epoch": best_epoch,
      "stopped_early": len(train_seconds) < args.epochs, "best_valid_mrr10": float(best_score),
      "valid_history": valid, "test": {k: float(test[RECBOLE_KEYS[k]]) for k in names},
      **timing_summary(train_seconds, train_cpu, eval_end, best_epoch)}


def _dump_recbole_split(path, train_data, valid_data, test_data, kind, np):
  """The rows RecBole holds out (raw ids), for the protocol check; sequential: also the inputs."""
  ds = train_data._dataset  # pylint: disable=protected-access
  uid, iid = ds.uid_field, ds.iid_field
  lut_u = np.array([-1 if t == "[PAD]" else int(t) for t in ds.field2id_token[uid]], np.int64)
  lut_i = np.array([-1 if t == "[PAD]" else int(t) for t in ds.field2id_token[iid]], np.int64)
  out = {}
  for name, loader in (("train", train_data), ("valid", valid_data), ("test", test_data)):
    feat = loader._dataset.inter_feat  # pylint: disable=protected-access
    out[f"{name}_user"] = lut_u[feat[uid].numpy()]
    out[f"{name}_item"] = lut_i[feat[iid].numpy()]
    if kind == "sequential" and name != "train":
      hist = feat[iid + ds.config["LIST_SUFFIX"]].numpy()
      out[f"{name}_history"] = np.where(hist > 0, lut_i[hist], -1)
      out[f"{name}_length"] = feat[ds.item_list_length_field].numpy()
  np.savez_compressed(path, **out)


# -- jaxrec worker ------------------------------------------------------------------------------------


def run_jaxrec(args) -> dict:
  """Trains and tests one jaxrec model on the RecBole protocol with RecBole's hyper-parameters."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxrec.data import datasets  # pylint: disable=import-outside-toplevel
  from jaxrec.eval import paper_protocols, protocols  # pylint: disable=import-outside-toplevel
  from jaxrec.models import registry  # pylint: disable=import-outside-toplevel
  from jaxrec.train import fit, loop as loop_lib  # pylint: disable=import-outside-toplevel
  from jaxrec.train import learner as learner_lib  # pylint: disable=import-outside-toplevel
  from jaxrec.train import state as state_lib  # pylint: disable=import-outside-toplevel

  m = MODELS[args.model]
  t_data = time.perf_counter()
  log = datasets.load_dataset("ml-100k", cache_dir=args.cache_dir)
  protocol = paper_protocols.get(PROTOCOL[m["kind"]]).with_seed(args.seed)
  prep = paper_protocols.prepare(log, protocol)
  spec = registry.get(m["jaxrec"])
  train = prep.split.train
  valid_q, test_q = prep.valid_queries, prep.test_queries
  all_positions = m["kind"] == "sequential" and args.library == "jaxrec-allpos"
  if spec.family == "sequence":
    parts = [train, prep.split.valid, prep.split.test]
    valid_q = dataclasses.replace(valid_q, features=fit.query_features(spec, parts, 1, protocol.max_history))
    test_q = dataclasses.replace(test_q, features=fit.query_features(spec, parts, 2, protocol.max_history))
  config = fit.FitConfig(epochs=args.epochs, batch_size=m["batch_size"],
                         sequence_batch_size=max(1, m["batch_size"] // MAX_HISTORY), num_negatives=1,
                         history_len=MAX_HISTORY, learning_rate=LEARNING_RATE, clip_norm=None,
                         loss=m["loss"], patience=STOPPING_STEP + 1, all_positions=all_positions)
  if all_positions:
    config = dataclasses.replace(config, batch_size=config.sequence_batch_size)
  module = spec.make(log.num_users, log.num_items, **m["hparams"])
  examples = fit.training_examples(spec, train, config.history_len, all_positions)
  known = train.user_item_csr()
  data_seconds = time.perf_counter() - t_data

  rng = jax.random.PRNGKey(args.seed)
  init_rng, loop_rng = jax.random.split(rng)
  sample = next(iter(fit.epoch_batches({k: v[:2] for k, v in examples.items()}, known, log.num_items,
                                       dataclasses.replace(config, batch_size=2), args.seed, 0)))
  params = spec.init(init_rng, module, sample)
  tx = state_lib.make_optimizer("adam", LEARNING_RATE, clip_norm=None)
  learner = learner_lib.gradient_learner(spec.loss_fn(module, m["loss"]), tx)
  state = learner.init(params, init_rng)
  score_fn = spec.score_fn(module)
  full = protocols.FullRanking()
  names = ACCURACY[m["kind"]]

  def summary(p, queries):
    per_query = protocols.evaluate(score_fn, p, queries, full, log.num_items, ks=(10,)).per_query
    rr = np.asarray(per_query["MRR"])
    out = {k: float(np.mean(per_query[k])) for k in names}
    out["MRR@10"] = float(np.mean(np.where(rr >= 0.1, rr, 0.0)))  # RecBole's MRR@10 (0 beyond 10)
    return out

  t_start, t_end, c_start, c_end, valid = [], [], [], [], []
  t0 = [0.0, 0.0]

  def eval_fn(p):
    t_start.append(time.perf_counter() - t0[0])
    c_start.append(time.process_time() - t0[1])
    out = summary(p, valid_q)
    t_end.append(time.perf_counter() - t0[0])
    c_end.append(time.process_time() - t0[1])
    valid.append(out)
    epoch = len(t_end) - 1
    print(f"jaxrec {args.model} seed {args.seed} epoch {epoch}: "
          f"{t_start[-1] - (t_end[-2] if epoch else 0.0):.2f} s, valid MRR@10 {out['MRR@10']:.4f}",
          flush=True)
    return {f"valid/{k}": v for k, v in out.items()}

  steps_per_epoch = -(-len(examples["user"]) // config.batch_size)
  loop_config = loop_lib.LoopConfig(num_epochs=config.epochs, log_every=steps_per_epoch,
                                    metric="valid/MRR@10", patience=config.patience,
                                    steps_per_epoch=steps_per_epoch, progress=False)
  t0[:] = [time.perf_counter(), time.process_time()]
  best, history = loop_lib.train(
      loop_config, learner, state,
      lambda epoch: fit.epoch_batches(examples, known, log.num_items, config, args.seed, epoch),
      eval_fn, None, rng=loop_rng)
  evals = [h for h in history if h.get("kind") == "eval"]
  best_epoch = max(i for i, h in enumerate(evals) if h.get("best"))
  train_seconds = [t_start[0]] + [t_start[e] - t_end[e - 1] for e in range(1, len(t_start))]
  train_cpu = [c_start[0]] + [c_start[e] - c_end[e - 1] for e in range(1, len(c_start))]
  test = summary(learner.params(best), test_q)
  return {
      "library": "jaxrec", "model": args.model, "seed": args.seed,
      "versions": {"jax": jax.__version__, "backend": jax.default_backend(), "numpy": np.__version__,
                   "cpus": os.cpu_count()},
      "sequence_training": ("all_positions" if all_positions else "windows") if spec.family == "sequence"
                           else None,
      "protocol": protocol.describe(), "data_seconds": data_seconds, "epochs_run": len(t_end),
      "best_epoch": best_epoch, "stopped_early": len(t_end) < args.epochs,
      "best_valid_mrr10": valid[best_epoch]["MRR@10"],
      "valid_history": [dict(v, best=bool(h.get("best"))) for v, h in zip(valid, evals)], "test": test,
      **timing_summary(train_seconds, train_cpu, t_end, best_epoch)}


@functools.lru_cache(maxsize=None)
# -- driver -------------------------------------------------------------------------------------------


def _parse_caps(text: str) -> dict:
  """``"gru4rec=5,sasrec=3"`` or ``"10"`` (every model) -> ``{model: epochs}``."""
  caps = {}
  for part in filter(None, (p.strip() for p in (text or "").split(","))):
    if "=" in part:
      name, value = part.split("=", 1)
      if name not in MODELS:
        raise SystemExit(f"--max_epochs: unknown model {name!r}; known: {sorted(MODELS)}")
      caps[name] = int(value)
    else:
      caps.update({name: int(part) for name in MODELS})
  for name, value in caps.items():
    if value < 1:
      raise SystemExit(f"--max_epochs: {name}={value} must be >= 1")
  return caps


def prepare_data(workdir: str, cache_dir) -> tuple[str, str]:
  """Extracts RecBole's ml-100k.inter from the cached wheel into ``WORKDIR/data``; (data dir, sha256)."""
  from jaxrec.data import ml100k  # pylint: disable=import-outside-toplevel
  data_dir = os.path.join(workdir, "data")
  dest = os.path.join(data_dir, "ml-100k", "ml-100k.inter")
  if not os.path.exists(dest):
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with zipfile.ZipFile(ml100k.wheel_path(cache_dir)) as zf, zf.open(INTER_MEMBER) as src:
      blob = src.read()
    with open(dest + ".tmp", "wb") as f:
      f.write(blob)
    os.replace(dest + ".tmp", dest)
  with open(dest, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return data_dir, digest


def _settings(library: str, model: str, epochs: int, threads: int) -> dict:
  sequential = MODELS[model]["kind"] == "sequential" and library != "recbole"
  return {"epochs": epochs, "threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
          "sequence_training": None if not sequential else
          ("all_positions" if library == "jaxrec-allpos" else "windows")}


def run_one(args, library: str, model: str, seed: int, epochs: int, data_dir: str):
  """Runs (library, model, seed) in a fresh subprocess unless its result file already matches."""
  if library == "jaxrec-allpos" and MODELS[model]["kind"] != "sequential":
    return None  # the same as "jaxrec" for general models
  runs = os.path.join(args.workdir, "runs")
  out = os.path.join(runs, f"{library}-{model}-seed{seed}.json")
  settings = dict(_settings(library, model, epochs, args.threads),
                  omp_wait_policy=args.omp_wait_policy or None)
  if os.path.exists(out):
    old = read_json(out)
    if old.get("settings") == settings:
      print(f"[skip] {library} {model} seed {seed}: {out} exists", flush=True)
      return old
    print(f"[rerun] {library} {model} seed {seed}: settings {old.get('settings')} -> {settings}", flush=True)
  python = args.recbole_python if library == "recbole" else sys.executable
  if library == "recbole" and not os.path.exists(python):
    raise SystemExit(f"{python} not found: run `bash benchmarks/recbole_env.sh` first")
  worker = "recbole" if library == "recbole" else "jaxrec"
  cmd = [python, os.path.abspath(__file__), f"--worker={worker}", f"--model={model}", f"--seed={seed}",
         f"--epochs={epochs}", f"--threads={args.threads}", f"--data_dir={data_dir}", f"--out={out}",
         f"--library={library}"]
  if args.cache_dir:
    cmd.append(f"--cache_dir={args.cache_dir}")
  if library == "recbole" and seed == min(args.seed_list):
    kind = MODELS[model]["kind"]
    cmd.append(f"--dump_split={os.path.join(runs, 'recbole-split-' + kind + '.npz')}")
  env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  if args.omp_wait_policy:
    env["OMP_WAIT_POLICY"] = args.omp_wait_policy
  print(f"[run] {' '.join(cmd)}", flush=True)
  t = time.perf_counter()
  proc = subprocess.run(cmd, env=env, check=False)
  if proc.returncode != 0:
    raise SystemExit(f"{library} {model} seed {seed} failed with status {proc.returncode}")
  res = read_json(out)
  print(f"[done] {library} {model} seed {seed} in {time.perf_counter() - t:.0f} s: test {res['test']}, "
        f"{res['median_epoch_seconds']:.3f} s/epoch", flush=True)
  return res


def check_splits(workdir: str, cache_dir) -> dict:
  """Compares RecBole's split (dumped by its first seed) with jaxrec's under the same protocol."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jaxrec.data import datasets  # pylint: disable=import-outside-toplevel
  from jaxrec.eval import paper_protocols  # pylint: disable=import-outside-toplevel
  from jaxrec.models import registry  # pylint: disable=import-outside-toplevel
  from jaxrec.train import fit  # pylint: disable=import-outside-toplevel

  log = datasets.load_dataset("ml-100k", cache_dir=cache_dir)
  users, items = log.user_vocab.raw, log.item_vocab.raw
  out = {}
  path = os.path.join(workdir, "runs", "recbole-split-general.npz")
  if os.path.exists(path):
    rb = np.load(path)
    sp = paper_protocols.prepare(log, "recbole-random-811").split
    counts = []
    for part in ("train", "valid", "test"):
      c = np.zeros(log.num_users, np.int64)
      np.add.at(c, np.searchsorted(users, rb[f"{part}_user"]), 1)
      counts.append(c)
    rb_counts = np.stack(counts, axis=1)
    same = bool(np.array_equal(rb_counts, sp.info["counts"]))
    out["general"] = {"per_user_part_sizes_equal": same, "users": int(log.num_users),
                      "rows": [int(x) for x in rb_counts.sum(axis=0)]}
  path = os.path.join(workdir, "runs", "recbole-split-sequential.npz")
  if os.path.exists(path):
    rb = np.load(path)
    prep = paper_protocols.prepare(log, "recbole-leave-one-out")
    parts = [prep.split.train, prep.split.valid, prep.split.test]
    spec = registry.get("sasrec")
    res = {}
    for k, name in ((1, "valid"), (2, "test")):
      part = parts[k]
      ours = sorted(zip(users[part.user].tolist(), items[part.item].tolist()))
      theirs = sorted(zip(rb[f"{name}_user"].tolist(), rb[f"{name}_item"].tolist()))
      feats = fit.query_features(spec, parts, k, MAX_HISTORY)
      hist = [tuple(items[h[m]].tolist()) for h, m in zip(feats["history"], feats["history_mask"])]
      ours_h = sorted(zip(users[part.user].tolist(), hist))
      theirs_h = sorted((int(u), tuple(int(x) for x in h[:n]))
                        for u, h, n in zip(rb[f"{name}_user"], rb[f"{name}_history"], rb[f"{name}_length"]))
      res[f"{name}_rows_equal"] = ours == theirs
      res[f"{name}_histories_equal"] = ours_h == theirs_h
      res[f"{name}_rows"] = len(ours)
    # RecBole's training rows are its targets: every train row but each user's first.
    res["train_targets"] = int(len(rb["train_user"]))
    res["train_targets_equal"] = int(len(parts[0]) - np.count_nonzero(parts[0].user_counts())) == len(
        rb["train_user"])
    out["sequential"] = res
  return out


def _mean_std(values: list) -> tuple[float, float]:
  vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
  if not vals:
    return float("nan"), float("nan")
  return float(statistics.fmean(vals)), float(statistics.stdev(vals)) if len(vals) > 1 else 0.0


def _load(span) -> str:
  return "n/a" if not span else f"{span[0]:.1f}-{span[1]:.1f}"


def _fmt(mean: float, std: float, digits: int = 4) -> str:
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def aggregate(results: list) -> dict:
  """``{model: {library: summary over seeds}}`` of the per-run results."""
  table = {}
  for model in MODELS:
    for lib in LIBRARIES:
      runs = [r for r in results if r["model"] == model and r["library"] == lib]
      if not runs:
        continue
      kind = MODELS[model]["kind"]
      loads = [x for r in runs for x in r.get("loadavg", [])]
      row = {"seeds": sorted(r["seed"] for r in runs), "epochs_cap": runs[0]["settings"]["epochs"],
             "loadavg_range": [min(loads), max(loads)] if loads else None,
             "epochs_run": [r["epochs_run"] for r in runs], "best_epoch": [r["best_epoch"] for r in runs],
             "converged": all(r["stopped_early"] for r in runs),
             "sequence_training": runs[0].get("sequence_training")}
      for key in ("median_epoch_seconds", "median_epoch_cpu_seconds", "first_epoch_seconds",
                  "seconds_to_best_valid", "total_seconds"):
        row[key] = _mean_std([r[key] for r in runs])
      for metric in ACCURACY[kind]:
        row[metric] = _mean_std([r["test"][metric] for r in runs])
      table.setdefault(model, {})[lib] = row
  return table


def render(table: dict, checks: dict, meta: dict) -> str:
  """The report: command, table, ratios, protocol checks."""
  lines = [f"# jaxrec vs RecBole {meta.get('recbole_version', '1.2.1')} on ML-100K", "",
           f"Command: `{meta['command']}`", "",
           f"Data: `{INTER_MEMBER}` (sha256 `{meta['data_sha256'][:16]}…`), {meta['threads']} threads per "
           f"run, OMP_WAIT_POLICY={meta.get('omp_wait_policy')}. Mean ± standard deviation over seeds; "
           "accuracy on the test part at the best validation epoch (MRR@10), full ranking. The load "
           "average column is the machine's 1-minute load at the runs' starts and ends.", "",
           "| model | library | protocol | seeds | epochs run (cap) | best epoch | s / epoch (wall, median "
           "of epochs 2..) | CPU s / epoch | first epoch s | s to best valid | test Recall@10 or Hit@10 "
           "| test NDCG@10 | converged | load avg |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for model, libs in table.items():
    kind = MODELS[model]["kind"]
    for lib, row in libs.items():
      acc, ndcg = ACCURACY[kind]
      name = MODELS[model]["recbole" if lib == "recbole" else "jaxrec"]
      if row.get("sequence_training"):
        name += f" ({row['sequence_training']})"
      cap = row["epochs_cap"]
      lines.append(
          f"| {model} | {lib}: {name} | {PROTOCOL[kind]} | {len(row['seeds'])} | "
          f"{'/'.join(map(str, row['epochs_run']))} ({cap}) | {'/'.join(map(str, row['best_epoch']))} | "
          f"{_fmt(*row['median_epoch_seconds'], 3)} | {_fmt(*row['median_epoch_cpu_seconds'], 3)} | "
          f"{_fmt(*row['first_epoch_seconds'], 2)} | "
          f"{_fmt(*row['seconds_to_best_valid'], 1)} | {acc} {_fmt(*row[acc])} | {_fmt(*row[ndcg])} | "
          f"{'yes (early stopped)' if row['converged'] else f'**no** (stopped by the {cap}-epoch cap)'} | "
          f"{_load(row.get('loadavg_range'))} |")
  lines += ["", "Ratios (RecBole / jaxrec, means over seeds):", ""]
  for model, libs in table.items():
    for lib in [x for x in libs if x != "recbole"]:
      if "recbole" not in libs:
        continue
      rb, jx = libs["recbole"], libs[lib]
      acc, ndcg = ACCURACY[MODELS[model]["kind"]]
      per_epoch = rb["median_epoch_seconds"][0] / jx["median_epoch_seconds"][0]
      per_cpu = rb["median_epoch_cpu_seconds"][0] / jx["median_epoch_cpu_seconds"][0]
      to_best = rb["seconds_to_best_valid"][0] / jx["seconds_to_best_valid"][0]
      gap = jx[ndcg][0] - rb[ndcg][0]
      spread = max(rb[ndcg][1], jx[ndcg][1])
      lines.append(f"- {model}, {lib}: per epoch **{per_epoch:.1f}x** wall, {per_cpu:.1f}x CPU; to best "
                   f"validation {to_best:.1f}x; test NDCG@10 {lib} - RecBole = {gap:+.4f} (larger seed "
                   f"std {spread:.4f}: {'within' if abs(gap) <= 2 * spread else 'outside'} 2 std), {acc} "
                   f"{jx[acc][0] - rb[acc][0]:+.4f}")
  lines += ["", "Protocol checks (RecBole's own split, dumped by its first seed, against jaxrec's):", ""]
  for kind, res in checks.items():
    lines.append(f"- {kind}: " + ", ".join(f"{k} {v}" for k, v in res.items()))
  return "\n".join(lines) + "\n"


def plot(table: dict, path: str) -> None:
  """Three panels: wall and CPU seconds per epoch (log scale), test NDCG@10 with the seeds' spread."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from jaxrec import io  # pylint: disable=import-outside-toplevel

  models = list(table)
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  width = 0.27
  libs = (("recbole", "#c44e52"), ("jaxrec", "#4c72b0"), ("jaxrec-allpos", "#55a868"))
  for j, (lib, color) in enumerate(libs):
    xs = [i + (j - 1) * width for i in range(len(models))]
    if not any(lib in table[m] for m in models):
      continue
    nan = (float("nan"), 0.0)
    for k, key in enumerate(("median_epoch_seconds", "median_epoch_cpu_seconds", "NDCG@10")):
      vals = [table[m].get(lib, {}).get(key, nan) for m in models]
      axes[k].bar(xs, [v[0] for v in vals], width, yerr=[v[1] for v in vals], color=color, label=lib)
      if k < 2:
        for x, v in zip(xs, vals):
          if not math.isnan(v[0]):
            axes[k].text(x, v[0], f"{v[0]:.2g}", ha="center", va="bottom", fontsize=7)
  labels = [m + ("" if all(r["converged"] for r in table[m].values()) else "\n(epoch cap)") for m in models]
  for ax in axes:
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels(labels, fontsize=8)
  for k, what in enumerate(("wall", "process CPU")):
    axes[k].set_yscale("log")
    axes[k].set_ylabel(f"training {what} seconds per epoch")
    axes[k].set_title(f"{what} time per epoch, ML-100K, 2 threads", fontsize=10)
  axes[2].set_ylabel("test NDCG@10 (full ranking)")
  axes[2].set_title("accuracy, mean ± std over seeds", fontsize=10)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  io.save_figure(fig, path)
  plt.close(fig)


def report(args, data_sha: str) -> None:
  import glob  # pylint: disable=import-outside-toplevel
  from jaxrec import io  # pylint: disable=import-outside-toplevel
  results = [read_json(p) for p in sorted(glob.glob(os.path.join(args.workdir, "runs", "*-seed*.json")))]
  results = [r for r in results if r["model"] in args.model_list]
  table = aggregate(results)
  checks = check_splits(args.workdir, args.cache_dir)
  rb_version = next((r["versions"]["recbole"] for r in results if r["library"] == "recbole"), "1.2.1")
  shown = [a for a in sys.argv[1:] if a != "--report_only"]  # the command that (re)makes the runs
  meta = {"command": "python -m benchmarks.vs_recbole " + " ".join(shown), "data_sha256": data_sha,
          "threads": args.threads, "recbole_version": rb_version,
          "omp_wait_policy": args.omp_wait_policy or None}
  text = render(table, checks, meta)
  io.atomic_write_text(os.path.join(args.workdir, "report.md"), text)
  io.atomic_write_json(os.path.join(args.workdir, "results.json"),
                       {"meta": meta, "table": table, "checks": checks, "runs": results})
  if table:
    plot(table, os.path.join(args.workdir, "vs_recbole.png"))
  print(text)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/vs_recbole")
  p.add_argument("--models", default="bpr,neumf,gru4rec,sasrec")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--libraries", default=",".join(LIBRARIES),
                 help="which of recbole, jaxrec, jaxrec-allpos (sequential models only) to run")
  p.add_argument("--max_epochs", default="", help="epoch caps: N (every model) or MODEL=N,...; "
                 f"default RecBole's {EPOCHS} with early stopping")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--omp_wait_policy", default="PASSIVE",
                 help="OMP_WAIT_POLICY of every run ('' leaves it unset). torch's OpenMP threads spin at "
                 "each barrier by default; on a machine shared with other jobs that made RecBole's BPR "
                 "epoch 12-23 s instead of 0.6-1.3 s (PASSIVE), so PASSIVE is RecBole's fairer setting")
  p.add_argument("--recbole_python", default=os.path.join(ROOT, ".venv-recbole", "bin", "python"))
  p.add_argument("--cache_dir", default=None)
  p.add_argument("--report_only", action="store_true")
  # worker flags (one run in a subprocess)
  p.add_argument("--worker", choices=("recbole", "jaxrec"), default=None)
  p.add_argument("--library", choices=LIBRARIES, default=None)
  p.add_argument("--model", default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--epochs", type=int, default=EPOCHS)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--out", default=None)
  p.add_argument("--dump_split", default=None)
  p.add_argument("--anomaly", action="store_true", help="RecBole: keep autograd anomaly mode on")
  args = p.parse_args(argv)

  if args.worker:
    for name in ("out", "dump_split", "data_dir"):  # the RecBole worker changes directory
      if getattr(args, name):
        setattr(args, name, os.path.abspath(getattr(args, name)))
    args.library = args.library or args.worker
    load = loadavg()
    res = run_recbole(args) if args.worker == "recbole" else run_jaxrec(args)
    res["library"] = args.library
    res["loadavg"] = [load, loadavg()]
    res["settings"] = _settings(args.library, args.model, args.epochs, args.threads)
    write_json(args.out, res)
    return

  args.workdir = os.path.abspath(args.workdir)
  args.model_list = [m for m in args.models.split(",") if m]
  bad = [m for m in args.model_list if m not in MODELS]
  if bad:
    raise SystemExit(f"--models: unknown {bad}; known: {sorted(MODELS)}")
  args.seed_list = [int(s) for s in args.seeds.split(",") if s]
  libraries = [x for x in args.libraries.split(",") if x]
  if set(libraries) - set(LIBRARIES):
    raise SystemExit(f"--libraries: unknown {sorted(set(libraries) - set(LIBRARIES))}; known: {LIBRARIES}")
  caps = _parse_caps(args.max_epochs)
  os.makedirs(args.workdir, exist_ok=True)
  data_dir, sha = prepare_data(args.workdir, args.cache_dir)
  if not args.report_only:
    for model in args.model_list:
      for seed in args.seed_list:
        for lib in libraries:
          run_one(args, lib, model, seed, caps.get(model, EPOCHS), data_dir)
  report(args, sha)


if __name__ == "__main__":
  main()
