"""``python -m experiments.transferrable``: the TP experiment under the name of its issue (same flags as
:mod:`experiments.tp`, which holds the code and the main job's entry)."""

from experiments import tp

if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  tp.define_flags()
  app.run(tp.main)
