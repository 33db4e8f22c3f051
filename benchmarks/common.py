"""What several benchmarks share."""


def peak_rss_mib() -> float:
  """This process's peak resident memory so far (``VmHWM`` in ``/proc/self/status``), MiB."""
  with open("/proc/self/status", encoding="utf-8") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("no VmHWM in /proc/self/status")
