"""SML's period protocols (paper 003, Sec. 4.1.1 and 4.1.3) as named presets.

* ``"yelp-like"``: 40 equal-count periods; periods 0-9 train the initial model (the stream's offline
  prefix), retraining starts at period 10; periods 30-32 validate and 33-39 test (the 30/3/7 ratio).
* ``"adressa-like"``: 63 periods of equal time spans (Adressa's are the day thirds 0-10h, 10-17h,
  17-24h; equal spans here, since the spans of a generic log have no calendar meaning), initial model on
  periods 0-19, validation 48-52, test 53-62 (the 48/5/10 ratio).
* ``"quick"``: 20 equal-count periods, initial model on 0-4, validation 15-16, test 17-19 (a short run).

Blocks are the periods after the initial ones (:func:`jaxrec.stream.blocks.from_periods`); the training
periods between the initial model and validation are streamed too (Algorithm 1 is Algorithm 2 run over
them) but not averaged. Averages weigh each period by its interactions over *every* validation or test
period (the authors' code silently drops the last test period from SML's average; we do not).
"""

from __future__ import annotations

import dataclasses

from jaxrec.stream import blocks as blocks_lib


@dataclasses.dataclass(frozen=True)
class PeriodProtocol:
  """Periods and their roles.

  Attributes:
    num_periods: periods of the whole log.
    mode: ``"count"`` (equal interactions) or ``"calendar"`` (equal time spans).
    initial: periods that train the initial model (the offline prefix).
    valid, test: the last ``valid + test`` periods: validation, then test.
  """

  num_periods: int
  mode: str
  initial: int
  valid: int
  test: int

  def __post_init__(self):
    if self.mode not in ("count", "calendar"):
      raise ValueError(f"PeriodProtocol.mode must be count or calendar, got {self.mode!r}")
    if not (1 <= self.initial and self.valid >= 0 and self.test >= 1
            and self.initial + self.valid + self.test <= self.num_periods):
      raise ValueError(f"PeriodProtocol: need initial >= 1, test >= 1 and initial + valid + test <= "
                       f"num_periods, got {self}")


PRESETS = {
    "yelp-like": PeriodProtocol(num_periods=40, mode="count", initial=10, valid=3, test=7),
    "adressa-like": PeriodProtocol(num_periods=63, mode="calendar", initial=20, valid=5, test=10),
    "quick": PeriodProtocol(num_periods=20, mode="count", initial=5, valid=2, test=3),
}


@dataclasses.dataclass(frozen=True)
class PeriodBlocks:
  """The stream's blocks and the block indices of each role."""

  data: blocks_lib.Blocks
  train: tuple
  valid: tuple
  test: tuple


def make_blocks(log, protocol: PeriodProtocol, pad_multiple: int = 256) -> PeriodBlocks:
  """Blocks of ``log`` under ``protocol``; roles counted from the end (calendar periods may be empty
  and are dropped, so a role keeps its number of non-empty periods)."""
  data = blocks_lib.from_periods(log, protocol.num_periods, protocol.initial, pad_multiple=pad_multiple,
                                 mode=protocol.mode)
  n = len(data)
  if n < protocol.valid + protocol.test:
    raise ValueError(f"{log.name}: {n} non-empty streamed periods, fewer than valid + test = "
                     f"{protocol.valid + protocol.test}")
  first_valid = n - protocol.valid - protocol.test
  return PeriodBlocks(data=data, train=tuple(range(first_valid)),
                      valid=tuple(range(first_valid, n - protocol.test)),
                      test=tuple(range(n - protocol.test, n)))
