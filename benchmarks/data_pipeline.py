"""Throughput of the host-side data pipeline: generator, negatives, windows.

Run: ``python -m benchmarks.data_pipeline`` (prints rows/s; figures are from one run).
"""

import sys
import time

import numpy as np

from jaxrec.data import samplers, synthetic


def _timed(fn):
  t = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t


def main():
  print("command:", "python -m benchmarks.data_pipeline", *sys.argv[1:])
  for preset in ("small", "medium"):
    log, dt = _timed(lambda p=preset: synthetic.generate(p))
    print(f"generate({preset}): {len(log):,} rows in {dt:.2f} s = {len(log) / dt:,.0f} rows/s")
  chunks = synthetic.generate_chunks("large", chunks=range(3))
  t = time.perf_counter()
  rows = sum(len(c) for c in chunks)
  dt = time.perf_counter() - t
  n_large = synthetic.expected_interactions("large")
  print(f"generate_chunks(large) 3 of {synthetic.num_chunks('large')} chunks: {rows:,} rows in {dt:.2f} s "
        f"= {rows / dt:,.0f} rows/s (whole preset ~{n_large / (rows / dt) / 60:.0f} min)")
  log = synthetic.generate("medium")
  csr = log.user_item_csr()
  rng = np.random.default_rng(0)
  users = rng.integers(0, log.num_users, 100_000)
  _, dt = _timed(lambda: samplers.sample_negatives(rng, users, 100, log.num_items, csr))
  print(f"sample_negatives uniform [100k, 100] on medium: {1e7 / dt:,.0f} negatives/s")
  pop = log.item_counts().astype(float)
  _, dt = _timed(lambda: samplers.sample_negatives(rng, users, 100, log.num_items, csr, pop))
  print(f"sample_negatives popularity [100k, 100] on medium: {1e7 / dt:,.0f} negatives/s")
  _, dt = _timed(lambda: samplers.last_windows(log, 50))
  print(f"last_windows(L=50) on medium: {len(log) / dt:,.0f} rows/s")


if __name__ == "__main__":
  main()
