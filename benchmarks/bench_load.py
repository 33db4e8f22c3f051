"""Loader throughput and peak memory on an ML-25M-style ``ratings.csv``.

Writes ``--rows`` rows (default 10M) in the exact ML-25M layout (header
``userId,movieId,rating,timestamp``, sparse movie ids, half-star ratings) to a temporary directory,
then loads it with :func:`jaxrec.data.loaders.load_movielens_csv` in a fresh Python process that
reports rows/s and its peak resident memory (``VmHWM`` from ``/proc/self/status``) minus a baseline
taken after the imports, compared with the bytes of the final arrays (columns + vocabularies).

Targets: >= 1M rows/s and peak memory <= 3x the final arrays.

  python -m benchmarks.bench_load                  # 10M rows
  python -m benchmarks.bench_load --rows=1000000   # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

_CHILD = r"""
import json, sys, time
import numpy as np
from jaxrec.data import loaders

def hwm_bytes():
  for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) * 1024
  raise RuntimeError("no VmHWM in /proc/self/status")

base = hwm_bytes()
t0 = time.perf_counter()
log = loaders.load_movielens_csv(sys.argv[1])
secs = time.perf_counter() - t0
peak = hwm_bytes()
arrays = [log.user, log.item, log.timestamp, log.rating, log.user_vocab.raw, log.item_vocab.raw]
print(json.dumps({"rows": len(log), "seconds": secs, "baseline": base, "peak": peak,
                  "final_bytes": int(sum(a.nbytes for a in arrays)), "users": log.num_users,
                  "items": log.num_items}))
"""


def write_ratings_csv(path: str, rows: int, seed: int = 0, chunk: int = 2_000_000) -> int:
  """Writes an ML-25M-style ratings.csv with ``rows`` rows; returns its size in bytes."""
  rng = np.random.default_rng(seed)
  movie_ids = np.sort(rng.choice(209_171, size=62_423, replace=False) + 1)
  stars = pa.array(["0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0"])
  with open(path, "wb") as f:
    f.write(b"userId,movieId,rating,timestamp\n")
    for start in range(0, rows, chunk):
      n = min(chunk, rows - start)
      users = np.sort(rng.zipf(1.3, size=n) % 162_541 + 1)  # grouped by user, like the real file
      items = movie_ids[np.minimum(rng.zipf(1.2, size=n) - 1, movie_ids.size - 1)]
      table = pa.table({
          "userId": users,
          "movieId": items,
          "rating": stars.take(pa.array(rng.integers(0, 10, size=n))),
          "timestamp": rng.integers(789_652_009, 1_574_327_703, size=n),
      })
      pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
  return os.path.getsize(path)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=10_000_000)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="bench_load-") as tmp:
    path = os.path.join(tmp, "ratings.csv")
    t0 = time.perf_counter()
    size = write_ratings_csv(path, args.rows)
    print(f"wrote {args.rows:,} rows, {size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s: {path}")
    out = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, check=True)
  res = json.loads(out.stdout.strip().splitlines()[-1])
  extra = res["peak"] - res["baseline"]
  res.update(rows_per_s=res["rows"] / res["seconds"], extra_bytes=extra,
             mem_ratio=extra / res["final_bytes"], file_bytes=size)
  print(f"command: python -m benchmarks.bench_load --rows={args.rows}")
  print(f"loaded {res['rows']:,} rows ({res['users']:,} users, {res['items']:,} items) in "
        f"{res['seconds']:.2f} s = {res['rows_per_s'] / 1e6:.2f} M rows/s (target >= 1)")
  print(f"peak RSS above post-import baseline: {extra / 2**20:.0f} MiB; final arrays "
        f"{res['final_bytes'] / 2**20:.0f} MiB; ratio {res['mem_ratio']:.2f}x (target <= 3); "
        f"file {size / 2**20:.0f} MiB")
  return res


if __name__ == "__main__":
  main()
