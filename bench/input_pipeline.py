"""What the tf.data input pipeline adds to a training step.

Prints one JSON line. The Probabilistic U-Net (channels (32, 64, 128, 192), 3 convolutions per
block) trains on the synthetic LIDC-like dataset at 128x128 (`synthetic_ambiguous/lidc_like_128`,
built into `runs/data` on first use) with the training pipeline of the train binary
(`input_pipeline.train_dataset`: index-based reads in a seeded per-epoch order, the seeded grader
draw, batching, prefetch); the same compiled step is then timed on one batch held in memory. `input_pipeline_overhead` is
`pipeline_step_s / in_memory_step_s - 1` (0.05 = 5%).

Usage: python bench/input_pipeline.py [--batch 8] [--steps 6] [--data_dir runs/data]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the binaries (tf_prob_unet/runtime.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from bench.common import emit, machine, timeit_interleaved  # noqa: E402
from bench.train_throughput import build  # noqa: E402
from tf_prob_unet import input_pipeline  # noqa: E402

DATASET = "synthetic_ambiguous/lidc_like_128"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--data_dir", default="runs/data")
  args = parser.parse_args()

  builder = input_pipeline.get_builder(DATASET, args.data_dir)
  spec = input_pipeline.dataset_spec(builder)
  size = spec.image_shape[0]
  model = build("prob_unet", size)
  step = tf.function(lambda batch: model.train_step(batch))
  iterator = iter(input_pipeline.train_dataset(builder, spec, args.batch, seed=0))
  held = next(iterator)
  step(held)  # trace once; both timings below reuse the same concrete function

  # Interleave the two measurements so that background load hits both alike.
  times = timeit_interleaved({"piped": lambda: step(next(iterator))["loss"].numpy(),
                              "memory": lambda: step(held)["loss"].numpy()},
                             repeats=args.steps, warmup=0)
  pipeline_s, memory_s = times["piped"], times["memory"]
  emit({
      "config": {"dataset": DATASET, "batch": args.batch, "size": size,
                 "channels": [32, 64, 128, 192], "timed_steps": args.steps,
                 "statistic": "median of interleaved single steps"},
      **machine(),
      "pipeline_step_s": pipeline_s,
      "in_memory_step_s": memory_s,
      "input_pipeline_overhead": pipeline_s / memory_s - 1.0,
      "targets": {"input_pipeline_overhead": "<= 0.05"},
  })


if __name__ == "__main__":
  main()
