"""Settings for the whole test session.

XLA's CPU backend runs at optimisation level 0 here (``--xla_backend_optimization_level=0``, appended
to any ``XLA_FLAGS`` the caller set; read when JAX first initialises its backend, after this file is
imported). The suite's arrays are tiny, so its time goes into compiling, not running: level 0 skips
LLVM's optimisation passes and cut ``tests/test_sml.py`` from 107 to 82 CPU seconds, and the whole
suite's from about 1,070 to about 820 on the same tests (one session, 2026-12-07, under load; CPU time
per test from a pytest hook). The HLO that is compiled is the same; the whole suite passes at both
levels. Subprocesses (the binaries in test_bad_input, the sharding workers, the notebook kernels)
inherit the flag.
Benchmarks, binaries and notebooks run outside the tests use XLA's default level.
"""

import os

_FLAG = "--xla_backend_optimization_level=0"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
