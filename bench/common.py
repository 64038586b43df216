"""Shared helpers of the benchmark scripts (each prints one JSON line)."""

import datetime
import json
import os
import platform
import time


def timeit(fn, repeats=5, warmup=2, best=False):
  """Wall time in seconds of `fn()` over `repeats` runs after `warmup` runs.

  The median, or with `best=True` the minimum (the least disturbed run: use it for ratios of two
  timings taken one after the other on a shared machine).
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  times.sort()
  return times[0] if best else times[len(times) // 2]


def machine():
  """Facts to store beside every figure."""
  return {"cores": os.cpu_count(), "machine": platform.machine(),
          "date": datetime.date.today().isoformat(),
          "allocator": os.environ.get("LD_PRELOAD", "") or "glibc malloc"}


def emit(record):
  print(json.dumps(record, sort_keys=True))
