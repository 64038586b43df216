"""Shared helpers of the benchmark scripts (each prints one JSON line)."""

import datetime
import json
import os
import platform
import time

from tf_prob_unet import runtime  # no TensorFlow import


def timeit(fn, repeats=5, warmup=2, best=False):
  """Wall time in seconds of `fn()` over `repeats` runs after `warmup` runs.

  The median, or with `best=True` the minimum (the least disturbed run: use it for ratios of two
  timings taken one after the other on a shared machine).
  """
  return timeit_interleaved({"fn": fn}, repeats=repeats, warmup=warmup, best=best)["fn"]


def timeit_interleaved(fns, repeats=5, warmup=1, best=False):
  """Wall times in seconds of several functions, run in turn within each round.

  For ratios between the functions on a shared machine: a slow spell hits every function's
  runs alike instead of one function's. `fns` maps names to callables; returns the median (or
  with `best=True` the minimum) per name, after `warmup` untimed rounds.
  """
  times = {name: [] for name in fns}
  for round_ in range(warmup + repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      if round_ >= warmup:
        times[name].append(time.perf_counter() - start)
  return {name: (min(t) if best else sorted(t)[len(t) // 2]) for name, t in times.items()}


def machine():
  """Facts to store beside every figure."""
  return {"cores": os.cpu_count(), "machine": platform.machine(),
          "date": datetime.date.today().isoformat(),
          "allocator": runtime.current(),
          "onednn": os.environ.get(runtime.ONEDNN_ENV, "TensorFlow's default")}


def emit(record):
  print(json.dumps(record, sort_keys=True))


def graph_flops(graph):
  """Floating-point operations of one run of `graph` (a tf.Graph, e.g. a concrete function's).

  Uses TensorFlow's registered per-op statistics (convolutions and their gradients, matmuls,
  element-wise ops), the counter behind `tf.compat.v1.profiler`; ops inside control flow count
  once.
  """
  from tensorflow.python.profiler import model_analyzer, option_builder  # pylint: disable=g-import-not-at-top
  options = option_builder.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  return model_analyzer.profile(graph, options=options).total_float_ops


def matmul_gflops(n=2048, repeats=10):
  """GFLOP/s of an `[n, n] x [n, n]` float32 `tf.matmul` (the machine's practical peak)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  a = tf.random.stateless_normal([n, n], [0, 1])
  b = tf.random.stateless_normal([n, n], [0, 2])
  fn = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
  seconds = timeit(lambda: fn().numpy(), repeats=repeats, warmup=2, best=True)
  return 2.0 * n ** 3 / seconds / 1e9


def peak_rss_gb():
  """Peak resident memory of this process so far, in GB (Linux `ru_maxrss` is in KiB)."""
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
