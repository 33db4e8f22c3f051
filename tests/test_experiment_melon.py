"""The MeLON binary's resume: a rerun keeps the validation choices of the streams it resumes."""

import json
import os

from experiments import melon as exp


def test_a_rerun_reuses_the_saved_validation_choices(tmp_path, monkeypatch):
  config = exp.MelonExperimentConfig(models=("mf-bpr",), strategies=("fine-tune", "replay"), min_count=0, offline=0.5,
                                     pretrain_epochs=1, max_blocks=4, validation=0.1, full_ranking=False,
                                     lr_grid=(1e-3, 1e-1))
  calls = []
  stream = exp._stream  # pylint: disable=protected-access

  def counted(*args):
    calls.append(1)
    return stream(*args)

  monkeypatch.setattr(exp, "_stream", counted)
  first = exp.run(config, "synthetic:tiny", workdir=str(tmp_path))
  assert len(calls) == 4  # 2 strategies x 2 learning rates on validation
  saved = json.loads((tmp_path / "streams" / "mf-bpr" / "replay" / "seed0" / exp.CHOICE).read_text())
  assert saved["value"] in (1e-3, 1e-1) and len(saved["validation HR@5"]) == 2
  again = exp.run(config, "synthetic:tiny", workdir=str(tmp_path))
  assert len(calls) == 4  # no validation stream reran
  assert again["chosen"] == first["chosen"]
  timings = ("ms/batch (median)", "init s", "pretrain s")
  assert [{k: v for k, v in r.items() if k not in timings} for r in again["table"]] == [
      {k: v for k, v in r.items() if k not in timings} for r in first["table"]]
  # A stream chosen before validation.json existed: its run_config.json's value, scores unknown.
  os.remove(tmp_path / "streams" / "mf-bpr" / "replay" / "seed0" / exp.CHOICE)
  assert exp._saved_choice(str(tmp_path / "streams" / "mf-bpr" / "replay" / "seed0")) == (  # pylint: disable=protected-access
      saved["value"], {})
  assert exp._saved_choice(str(tmp_path / "nowhere")) is None  # pylint: disable=protected-access
