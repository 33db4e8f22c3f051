"""Dataset specs: one string names any dataset an experiment binary can run on.

=============================  ==================================================
spec                           meaning
=============================  ==================================================
``synthetic:PRESET``           the embedded generator (``tiny`` ... ``large``)
``ml-100k``                    MovieLens-100K from the ``recbole==1.2.1`` wheel
``FORMAT:PATH``                a public dataset's own file, read by
                               :func:`jaxrec.data.loaders.load` (e.g.
                               ``ml-25m:/data/ml-25m/ratings.csv``,
                               ``taobao:/data/UserBehavior.csv``)
=============================  ==================================================

Experiment binaries take ``--dataset=SPEC``; nothing here downloads except the
ML-100K wheel from PyPI into the cache directory.
"""

from __future__ import annotations

from typing import Optional

from jaxrec.data.log import DataError, InteractionLog


def load_dataset(spec: str, *, seed: int = 0, cache_dir: Optional[str] = None) -> InteractionLog:
  """Resolves a dataset spec (table above) to an :class:`InteractionLog`."""
  if spec == "ml-100k":
    from jaxrec.data import ml100k  # pylint: disable=import-outside-toplevel
    return ml100k.load_ml100k(cache_dir=cache_dir)
  if ":" not in spec:
    raise DataError(f"dataset spec {spec!r}: expected 'synthetic:PRESET', 'ml-100k' or 'FORMAT:PATH'")
  kind, arg = spec.split(":", 1)
  if kind == "synthetic":
    from jaxrec.data import synthetic  # pylint: disable=import-outside-toplevel
    return synthetic.generate(arg, seed=seed)
  from jaxrec.data import loaders  # pylint: disable=import-outside-toplevel
  if kind not in loaders.FORMATS:
    raise DataError(f"dataset spec {spec!r}: unknown format {kind!r}; known: {sorted(loaders.FORMATS)}")
  return loaders.load(kind, arg)


def short_name(spec: str) -> str:
  """A report-friendly name: ``synthetic:small`` -> ``synthetic-small``, paths -> file stem."""
  if spec == "ml-100k":
    return spec
  kind, _, arg = spec.partition(":")
  if kind == "synthetic":
    return f"synthetic-{arg}"
  import os  # pylint: disable=import-outside-toplevel
  return f"{kind}-{os.path.splitext(os.path.basename(arg))[0]}"
