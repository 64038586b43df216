"""Training throughput of the Probabilistic U-Net and of the deterministic U-Net, against matmul.

Prints one JSON line. Configuration: 128x128x1 images, 2 classes, channels (32, 64, 128, 192)
(the reference LIDC size), 3 convolutions per block, Adam, batches of 8 and 32 held in memory
(`bench/input_pipeline.py` measures what the tf.data pipeline adds). For each model and batch:
images per second of the compiled `train_step` (the same function the train binary runs), the
FLOPs of one training step counted from its graph (forward, backward and optimizer; TensorFlow's
registered op statistics), the achieved GFLOP/s, and, measured in the same process before and
after the models (the better of the two is kept), the GFLOP/s of a large float32 matrix multiply.
Fields named by the targets: `train_gflops_ratio_to_matmul` (the
best model/batch's achieved GFLOP/s over the matmul's) and `prob_unet_over_unet_train_step` (step
time ratio at batch 32).

Usage: python bench/train_throughput.py [--steps 4] [--batches 8,32] [--size 128]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the binaries (tf_prob_unet/runtime.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import emit, graph_flops, machine, matmul_gflops, timeit  # noqa: E402
from tf_prob_unet import models  # noqa: E402
from tf_prob_unet.layers import shifted_conv2d  # noqa: E402

CHANNELS = (32, 64, 128, 192)
MODELS = ("prob_unet", "unet")


def build(name, size):
  """A compiled model of the reference LIDC size with its optimizer built."""
  model = models.get_model_class(name)(**models.filter_kwargs(
      name, dict(num_classes=2, channels=CHANNELS, convs_per_block=3)))
  model.build((None, size, size, 1))
  model.compile(optimizer=keras.optimizers.Adam(1e-4))
  model.optimizer.build(model.trainable_variables)
  return model


def measure(name, batch, size, steps):
  """Seconds per training step, and FLOPs per step counted from the step's graph."""
  model = build(name, size)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.random((batch, size, size, 1), np.float32))
  yy, xx = np.mgrid[:size, :size]
  disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2).astype(np.int32)
  labels = tf.constant(np.broadcast_to(disk, (batch, size, size)).copy())
  step = tf.function(lambda x, y: model.train_step((x, y)))
  # The model's FLOPs, counted on the graph with TensorFlow's own convolution gradients (the
  # tap matmuls of ShiftedConv2D run in a loop, which the counter would count once): the same
  # arithmetic, so the achieved GFLOP/s compare implementations fairly.
  saved, shifted_conv2d.MIN_CHANNELS = shifted_conv2d.MIN_CHANNELS, float("inf")
  try:
    flops = graph_flops(tf.function(lambda x, y: model.train_step((x, y))).get_concrete_function(
        images, labels).graph)
  finally:
    shifted_conv2d.MIN_CHANNELS = saved
  seconds = timeit(lambda: step(images, labels)["loss"].numpy(), repeats=steps, warmup=2,
                   best=False)
  return seconds, flops


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=4, help="timed steps (median) per case")
  parser.add_argument("--batches", default="8,32")
  parser.add_argument("--size", type=int, default=128)
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]

  # The matmul (the machine's practical peak) is timed before and after the models and the
  # better figure kept: one disturbed measurement on a shared machine would otherwise inflate
  # every ratio.
  matmul_runs = [matmul_gflops()]
  cases = {}
  for name in MODELS:
    for batch in batches:
      seconds, flops = measure(name, batch, args.size, args.steps)
      gflops = flops / seconds / 1e9
      cases[f"{name}_batch{batch}"] = {
          "images_per_s": batch / seconds, "step_s": seconds,
          "gflop_per_image": flops / batch / 1e9, "achieved_gflops": gflops}
      print(f"{name} batch {batch}: {batch / seconds:.2f} images/s, {gflops:.1f} GFLOP/s",
            file=sys.stderr, flush=True)
  matmul_runs.append(matmul_gflops())
  matmul = max(matmul_runs)
  for case in cases.values():
    case["ratio_to_matmul"] = case["achieved_gflops"] / matmul
  top = max(batches)
  record = {
      "config": {"size": args.size, "channels": list(CHANNELS), "convs_per_block": 3,
                 "num_classes": 2, "latent_dim": 6, "batches": batches,
                 "timed_steps": args.steps, "data": "one batch held in memory",
                 "flops": "counted from the train_step graph (forward + backward + Adam)"},
      **machine(),
      "matmul_gflops": matmul,
      "matmul_gflops_before_after": matmul_runs,
      "cases": cases,
      "train_gflops_ratio_to_matmul": max(c["ratio_to_matmul"] for c in cases.values()),
      "prob_unet_over_unet_train_step":
          cases[f"prob_unet_batch{top}"]["step_s"] / cases[f"unet_batch{top}"]["step_s"],
      "targets": {"train_gflops_ratio_to_matmul": ">= 0.9",
                  "prob_unet_over_unet_train_step": "<= 1.7"},
  }
  emit(record)


if __name__ == "__main__":
  main()
