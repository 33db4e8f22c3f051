# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Theory checks: the 2TS risk bound and threshold, the tree Rademacher bounds
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxrec/jaxrec/blob/main/colab/theory.ipynb)
#
# The numerical checks of the repository's `theory` package, computed two ways each:
# the two-time-scale risk bound `beta(t*)` of paper 000 (Theorem 2.1 / A.1) as a Hurwitz-zeta closed
# form and as a direct sum, its optimal threshold `t**` as printed (Eq. 7 / 15), as corrected, and as a
# brute-force argmin, the two step sizes of Implication 2, and a simulation of the bound in the paper's
# Setting (A); then the Rademacher-complexity bounds of the tree retriever of paper 004 (Theorems 4.5 and
# 4.9) against Monte Carlo estimates, and the counting step of the proof of Theorem 4.5 in exact
# integers. `python -m theory.report --workdir=DIR` writes the same checks, larger, as a report.
#
# **Run time at full length**: 3 min on CPU (2 shared cores, load ~14), jaxrec's test machine, 2026-12-07.
# The test suite runs this notebook shortened (`JAXREC_NOTEBOOK_SHORT=1`: smaller grids, fewer
# simulated users and Monte Carlo draws).
# Outputs are stripped in git: run it to see them.

# %%
# Install jaxrec where it is not installed yet (Colab); a GPU or TPU runtime is used when the runtime has
# one (JAX picks it), the CPU otherwise. The `theory` package is a top-level folder of the repository,
# not part of the installed `jaxrec`: where it is not importable, the repository is cloned (unless this
# is a checkout's root), installed from the clone, and the clone is put on sys.path.
import importlib.util
import os
import subprocess
import sys

REPO = "https://github.com/jaxrec/jaxrec"  # a fork: change this line and the badge above
if importlib.util.find_spec("theory") is None:
  if os.path.isdir("theory"):  # the root of a checkout
    sys.path.insert(0, os.getcwd())
  else:
    if not os.path.isdir(os.path.join("jaxrec", "theory")):
      subprocess.run(["git", "clone", "--depth=1", REPO, "jaxrec"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "./jaxrec"], check=True)
    sys.path.insert(0, os.path.abspath("jaxrec"))

import jax

print(f"JAX {jax.__version__}, backend: {jax.default_backend()} ({jax.devices()[0].device_kind})")

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from theory import tree_bounds as tb
from theory import two_time_scale as tt

SHORT = os.environ.get("JAXREC_NOTEBOOK_SHORT") == "1"  # the test suite's shortened run
ALPHAS = (1.5, 2.0, 3.0) if SHORT else (1.2, 1.5, 2.0, 3.0)
RATIOS = (0.5, 2.0, 2.5, 10.5) if SHORT else (0.5, 1.0, 2.0, 2.5, 3.0, 7.3, 10.0, 10.5, 37.9, 100.0)

# %% [markdown]
# ## Paper 000: the two-time-scale risk bound
# A user's number of offline observations `T` follows `P(T) = (T+1)^-alpha / zeta(alpha, 1)`. Users with
# `T >= t*` (active) start online gradient descent from their own offline estimate, whose error is at
# most `Q / (T+1)` (Proposition A.1); the others (inactive) start from the population mean `m`, at
# error `Var_m`. Theorem A.1 bounds the initial error by
#
# `beta(t*) = zeta(alpha+1, t*+1) / zeta(alpha, 1) * Q + (1 - zeta(alpha, t*+1) / zeta(alpha, 1)) * Var_m`
#
# and the excess risk of N online steps by `B sqrt(beta(t*) / N)` at the best common step size.
# `tt.beta` is the zeta closed form (pure JAX, float64 under `jax.enable_x64()`); `tt.beta_direct` sums
# over `T` directly (an Euler-Maclaurin tail, no zeta call).

# %%
with jax.enable_x64():
  print(f"{'alpha':>6s} {'t*':>5s} {'beta (zeta form)':>18s} {'beta (direct sum)':>18s} {'rel. diff':>10s}")
  rel_diffs = []
  for alpha in ALPHAS:
    for t_star in (0, 1, 7, 50, 400):
      closed = float(tt.beta(t_star, alpha, 9.0, 0.1))  # Q = 9, Var_m = 0.1
      direct = tt.beta_direct(t_star, alpha, 9.0, 0.1)
      rel_diffs.append(abs(closed - direct) / direct)
      print(f"{alpha:6.1f} {t_star:5d} {closed:18.10f} {direct:18.10f} {rel_diffs[-1]:10.1e}")
  gammas = np.geomspace(1e-4, 10, 200_001)
  grid_bound = tt.excess_risk_bound(gammas, 0.3, 100.0, 1.5)  # beta = 0.3, N = 100, B = 1.5
  print(f"best common step: closed form {float(tt.optimal_gamma(0.3, 100.0, 1.5)):.6f}, grid argmin "
        f"{gammas[np.argmin(grid_bound)]:.6f}; bound {float(tt.optimal_bound(0.3, 100.0, 1.5)):.6f} vs "
        f"{float(grid_bound.min()):.6f}")

# %% [markdown]
# ## The optimal threshold t**: printed, corrected, brute force
# `beta` depends on `Q` and `Var_m` only through their ratio `r = Q / Var_m` (up to scale), and
# `beta(t+1) - beta(t) = P(t) (Var_m - Q / (t+1))`: `beta` falls while `t + 1 < r` and rises after, so
# its smallest argmin is `max(ceil(r) - 1, 0)` (`tt.t_star_corrected`; for an integer `r`, `r - 1` and
# `r` tie). The paper prints `floor(r) - 1` (`tt.t_star_paper`). `tt.check_threshold` evaluates `beta`
# on every `t*` in `[0, 600]` and compares both closed forms with the brute-force argmin set.

# %%
with jax.enable_x64():
  rows = tt.check_threshold(ALPHAS, RATIOS, t_big=600)
print(f"{'alpha':>6s} {'Q/Var_m':>8s} {'brute argmin':>13s} {'printed':>8s} {'corrected':>10s} "
      f"{'printed ok':>11s} {'corrected ok':>13s} {'beta excess of printed':>23s}")
for r in rows:
  print(f"{r['alpha']:6.1f} {r['ratio']:8.1f} {str(r['argmin']):>13s} {r['paper']:8d} {r['corrected']:10d} "
        f"{str(r['paper_ok']):>11s} {str(r['corrected_ok']):>13s} "
        f"{'(t* < 0)' if r['paper'] < 0 else format(r['paper_rel_excess'], '.2e'):>23s}")
print(f"printed form right in {sum(r['paper_ok'] for r in rows)}/{len(rows)} cases, corrected form in "
      f"{sum(r['corrected_ok'] for r in rows)}/{len(rows)}")

# %% [markdown]
# ### Figure: beta(t*) and the three thresholds
# Left: `beta(t*) / Var_m` against `t*` (log scale) for a few `(alpha, Q/Var_m)`. Right, zoomed on the
# minimum: `beta(t*) / min beta - 1`; the dot is the brute-force minimum, the dashed line the corrected
# closed form, the dotted red line the printed one. Look for the dotted line one step left of the
# minimum whenever `Q / Var_m` is not an integer (the printed form is off by one), and for how flat
# `beta` is around its minimum (the printed threshold costs little: the table's last column).

# %%
cases = ((1.5, 10.5), (2.0, 10.5), (2.0, 25.0))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
with jax.enable_x64():
  t_grid = np.arange(0, 60)
  for alpha, ratio in cases:
    values = np.asarray(tt.beta(jnp.asarray(t_grid, jnp.float64), alpha, ratio, 1.0))
    best = tt.argmin_set(values)[0]
    line, = axes[0].semilogy(t_grid, values, label=f"alpha={alpha}, Q/Var_m={ratio}")
    color = line.get_color()
    axes[1].plot(t_grid, values / values[best] - 1.0, c=color)
    axes[1].plot(best, 0.0, "o", c=color)
    axes[1].axvline(int(tt.t_star_corrected(ratio)), ls="--", c=color, lw=0.8)
    axes[1].axvline(int(tt.t_star_paper(ratio)), ls=":", c="r", lw=0.8)
axes[0].set(xlabel="threshold t*", ylabel="beta(t*) / Var_m", title="beta(t*)")
axes[0].legend(fontsize=8)
axes[1].set(xlabel="threshold t*", ylabel="beta(t*) / min beta - 1", xlim=(0, 40), ylim=(-2e-4, 3e-3),
            title="near the minimum: brute force (o), corrected (--), printed (:)")
plt.show()

# %% [markdown]
# ## Implication 2: two step sizes
# Each group at its own best step: `gamma_in = sqrt(Var_m / N) / B` and
# `gamma_act = sqrt(zeta(alpha+1, t*+1) Q / (zeta(alpha, t*+1) N)) / B`. The paper says
# `gamma_act < gamma_in`; that holds iff the power-law mean of `1 / (T+1)` over `T >= t*` is below
# `Var_m / Q`, i.e. from some `t_gamma <= t**` on, and fails for small `t*` when `Q / Var_m` is large.

# %%
with jax.enable_x64():
  gamma_rows = tt.check_gamma(ALPHAS, (2.0, 10.0, 100.0))
print(f"{'alpha':>6s} {'Q/Var_m':>8s} {'t_gamma':>8s} {'t**':>5s} {'holds at t*=0':>14s} "
      f"{'gamma_act/gamma_in at 0':>24s} {'holds at t**':>13s}")
for r in gamma_rows:
  print(f"{r['alpha']:6.1f} {r['ratio']:8.1f} {r['t_gamma']:8d} {r['t_opt']:5d} {str(r['holds_at_0']):>14s} "
        f"{r['ratio_at_0']:24.3f} {str(r['holds_at_topt']):>13s}")

# %% [markdown]
# ## Setting (A): the bound against a simulation
# Logistic users over 16 items in 2 dimensions: offline projected SGD on each user's `T` observations,
# then `N` online steps at the common step `gamma = sqrt(beta(t*) / N) / B` from the Eq. 4 start (own
# estimate if `T >= t*`, else the mean `m`). The left panel is the measured excess risk against the bound
# `B sqrt(beta(t*) / N)`, the right one the measured initial error `E||phi_1 - phi*||^2` against
# `beta(t*)` (with `T` truncated at `T_max`, as `beta` is here). Look for the bound above the measurement
# at every `t*`, and for where each curve has its minimum: the bound's at `t**`, the measurement's
# elsewhere when `Q` (a worst case over users) is far above the actual offline error.

# %%
N_USERS, T_MAX, N_ONLINE = (100, 256, 100) if SHORT else (500, 1024, 200)
key = jax.random.PRNGKey(0)
with jax.enable_x64():
  setting = tt.make_setting(jax.random.fold_in(key, 200), N_USERS, spread=2.0)
  pop = tt.population(key, setting)
  t_opt = int(tt.t_star_corrected(pop["q"] / pop["var_m"]))
  t_sim = sorted(t for t in {0, 1, 2, 4, 8, 16, 32, 64, 128, T_MAX // 2, T_MAX + 1, t_opt} if t <= T_MAX + 1)
  sim = tt.simulate_setting_a(jax.random.fold_in(key, 7), setting, pop, 2.0, N_ONLINE, T_MAX, t_sim)
print(f"Q = {pop['q']:.3f}, Var_m = {pop['var_m']:.4f}, t** = {t_opt}; alpha = 2, N = {N_ONLINE}, "
      f"{N_USERS} users")
print(f"{'t*':>6s} {'excess risk':>12s} {'+- s.e.':>9s} {'bound':>9s} {'E|phi_1-phi*|^2':>16s} {'beta':>9s}")
for i, t in enumerate(sim["t_grid"]):
  print(f"{int(t):6d} {sim['excess_risk'][i]:12.5f} {sim['excess_risk_se'][i]:9.5f} {sim['bound'][i]:9.4f} "
        f"{sim['init_err'][i]:16.5f} {sim['beta'][i]:9.4f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
t_plot = np.maximum(sim["t_grid"], 0.5)
axes[0].loglog(t_plot, sim["excess_risk"], "o-", label="measured excess risk")
axes[0].loglog(t_plot, sim["bound"], "--", label="bound B sqrt(beta/N)")
axes[1].loglog(t_plot, sim["init_err"], "o-", label="measured E||phi_1 - phi*||^2")
axes[1].loglog(t_plot, sim["beta"], "--", label="beta(t*)")
for ax in axes:
  ax.axvline(max(t_opt, 0.5), c="k", ls=":", lw=0.8, label=f"t** = {t_opt}")
  ax.set_xlabel("threshold t* (0 drawn at 0.5)")
  ax.legend(fontsize=7)
axes[0].set_title("Setting (A): excess risk vs bound")
axes[1].set_title("initial error vs beta(t*)")
plt.show()

# %% [markdown]
# ## Paper 004: Rademacher bounds of the tree retriever
# A complete B-ary tree over N items, a linear scorer `f(x, v) = <w_v, x>` with `||w_v|| <= B0` and
# `||x|| <= Bx`, beam width K. Theorem 4.5 bounds the Rademacher complexity of the retrieval margins
# `g_f(x, y)` (Eq. 5) by `4 B0 Bx T / sqrt(m)` with `T = B N / sqrt(B^2 - 1)`; Theorem 4.9 bounds that of
# the ranker's linear class by `B0 Bx / sqrt(m)`. `tb.rademacher_gf_linear` estimates
# `E sup_f (1/m) sum_i eps_i g_f(x_i, y_i)` from below (the sup by projected gradient ascent from several
# starts), `tb.rademacher_pi1_linear` computes the linear class's sup exactly (`(B0/m) ||sum eps_i x_i||`).
# Since `|g_f| <= 2 B0 Bx`, the complexity never exceeds `2 B0 Bx` either.

# %%
MS = (50, 200) if SHORT else (25, 50, 100, 200)
BRANCHINGS = (2, 8) if SHORT else (2, 4, 8)
MC = dict(num_eps=2, num_starts=2, steps=10) if SHORT else dict(num_eps=8, num_starts=3, steps=100)
rad = []
for branching in BRANCHINGS:
  rad += tb.rademacher_gf_linear(7, branching, 64, MS, beam_width=4, dim=16, **MC)
pi1 = [tb.rademacher_pi1_linear(3, m, 16, 2000) for m in MS]
print("Theorem 4.5, N = 64 items, K = 4, d = 16, B0 = Bx = 1")
print(f"{'B':>3s} {'m':>5s} {'MC estimate':>12s} {'+- s.e.':>8s} {'bound':>8s} {'ratio':>8s}")
for r in rad:
  print(f"{r['B']:3d} {r['m']:5d} {r['estimate']:12.4f} {r['se']:8.4f} {r['bound']:8.2f} {r['ratio']:8.5f}")
print("Theorem 4.9 (linear ranker class), exact sup, 2000 sign draws")
print(f"{'m':>5s} {'MC value':>9s} {'bound':>8s} {'ratio':>6s}")
for r in pi1:
  print(f"{r['m']:5d} {r['estimate']:9.4f} {r['bound']:8.4f} {r['ratio']:6.3f}")

# %% [markdown]
# ### Figure: Monte Carlo complexities against Theorems 4.5 and 4.9
# Log-log in the sample size m. Left: the estimated complexity of the margins (a lower estimate) with
# Theorem 4.5's bound for each branching factor; right: the linear class's exact complexity with
# Theorem 4.9's bound. Look at the gap: Theorem 4.5's bound is above the trivial `2 B0 Bx` (dash-dot)
# at these m, i.e. vacuous, while Theorem 4.9's is within a small factor of the truth.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
for branching in BRANCHINGS:
  rb = [r for r in rad if r["B"] == branching]
  line = axes[0].errorbar([r["m"] for r in rb], [r["estimate"] for r in rb], [r["se"] for r in rb],
                          marker="o", label=f"MC, B={branching}")
  axes[0].plot([r["m"] for r in rb], [r["bound"] for r in rb], "--", c=line[0].get_color(),
               label=f"Thm 4.5, B={branching}")
axes[0].axhline(2.0, c="k", ls="-.", lw=0.8, label="trivial 2 B0 Bx")
axes[0].set_title("margins g_f (N=64): MC lower estimate vs Thm 4.5")
axes[1].plot([r["m"] for r in pi1], [r["estimate"] for r in pi1], "o-", label="exact-sup MC")
axes[1].plot([r["m"] for r in pi1], [r["bound"] for r in pi1], "--", label="Thm 4.9: B0 Bx / sqrt(m)")
axes[1].set_title("linear ranker class: MC vs Thm 4.9")
for ax in axes:
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xticks(MS, [str(m) for m in MS])
  ax.tick_params(axis="x", which="minor", labelbottom=False)
  ax.set_xlabel("sample size m")
  ax.set_ylabel("Rademacher complexity")
axes[0].legend(fontsize=7, ncol=2, loc="center right")
axes[1].legend(fontsize=7)
plt.show()

# %% [markdown]
# ## The counting step (c) of Theorem 4.5's proof, in exact integers
# Step (c) bounds the number of ordered pairs of distinct nodes on a common level of the tree by
# `N^2 B^2 / (B^2 - 1)`. `tb.check_counting` counts them exactly (integers, no rounding) for every
# `N` up to a maximum; a ratio above 1 means the step fails for that `(B, N)`, and the last column
# checks the weaker `N^2 (2B^2 - 1) / (B^2 - 1)`.

# %%
MAX_N = 200 if SHORT else 2000
counting = tb.check_counting((2, 3, 4, 8, 16), MAX_N)["rows"]
print(f"{'B':>3s} {'N checked':>10s} {'step fails':>11s} {'first failing N':>16s} {'max ratio':>10s} "
      f"{'weaker bound fails':>19s}")
for b in (2, 3, 4, 8, 16):
  rb = [r for r in counting if r[0] == b]
  fails = [r[1] for r in rb if not r[3]]
  worst = max(rb, key=lambda r: r[4])
  print(f"{b:3d} {f'2..{MAX_N}':>10s} {len(fails):11d} {str(fails[0] if fails else None):>16s} "
        f"{float(worst[4]):10.4f} {sum(not r[5] for r in rb):19d}")

# %%
assert max(rel_diffs) < 1e-6, max(rel_diffs)  # the two computations of beta agree
assert all(r["argmin"] and all(0 <= t <= 600 for t in r["argmin"]) for r in rows)
assert all(np.isfinite(r["gap"]) and r["gap"] >= 0 for r in rows)
assert all(g["t_gamma"] >= -1 for g in gamma_rows)
for name in ("excess_risk", "bound", "init_err", "beta"):
  assert np.all(np.isfinite(sim[name])), name
assert np.all(sim["bound"] > 0) and np.all(sim["beta"] > 0)
assert len(rad) == len(BRANCHINGS) * len(MS) and len(pi1) == len(MS)
for r in rad + pi1:
  assert np.isfinite(r["estimate"]) and abs(r["estimate"]) <= 2.0 + 1e-6 and r["bound"] > 0, r
assert len(counting) == 5 * (MAX_N - 1)
