"""Shared helpers of the benchmark scripts (each prints one JSON line)."""

import datetime
import json
import os
import platform
import time


def timeit(fn, repeats=5, warmup=2):
  """Median wall time in seconds of `fn()` over `repeats` runs after `warmup` runs."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  times.sort()
  return times[len(times) // 2]


def machine():
  """Facts to store beside every figure."""
  return {"cores": os.cpu_count(), "machine": platform.machine(),
          "date": datetime.date.today().isoformat(),
          "allocator": os.environ.get("LD_PRELOAD", "") or "glibc malloc"}


def emit(record):
  print(json.dumps(record, sort_keys=True))
