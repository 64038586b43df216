"""Cost of sampling: one U-Net forward vs `sample` with m = 1, 4, 16, 100 vs naive re-runs.

Prints one JSON line. Configuration: batch 8, 128x128x1 images, channels (32, 64, 128, 192),
latent 6, 2 classes (LIDC size). Times are per image, the best of 5 rounds in which every
function runs once in turn (the naive method is timed after them). `sample` uses
f_comb's native kernel where it builds (`fcomb_kernel` says which ran);
`sample100_tensorflow_ops_over_unet_forward` is m = 100 with TensorFlow's ops, as exports run it.

The Hierarchical Probabilistic U-Net (the release's LIDC architecture, 128x128x1, batch
`HPU_BATCH`) reruns its truncated and stitching decoders per sample:
`hpu_sample16_over_hpu_forward` is `sample` with m = 16 over one prior-mean prediction.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the binaries (tf_prob_unet/runtime.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import emit, machine, timeit, timeit_interleaved  # noqa: E402
from tf_prob_unet import native  # noqa: E402
from tf_prob_unet.models import HierarchicalProbUNet, ProbUNet  # noqa: E402

BATCH, SIZE, CHANNELS = 8, 128, (32, 64, 128, 192)
COUNTS = (1, 4, 16, 100)
HPU_BATCH = 2


def hpu_times():
  """Seconds per image of the HPU-Net's prior-mean prediction and of `sample` with m = 16."""
  model = HierarchicalProbUNet(num_classes=2)
  model.build((None, SIZE, SIZE, 1))
  images = tf.constant(np.random.default_rng(0).random((HPU_BATCH, SIZE, SIZE, 1), np.float32))
  seed = tf.constant([0, 1], tf.int64)
  forward = tf.function(lambda x: model(x, training=False))
  sample16 = tf.function(lambda x: model.sample(x, 16, seed=seed))
  times = timeit_interleaved({"forward": lambda: forward(images).numpy(),
                              "sample16": lambda: sample16(images).numpy()},
                             repeats=3, warmup=1, best=True)
  return {k: v / HPU_BATCH for k, v in times.items()}


def main():
  model = ProbUNet(num_classes=2, channels=CHANNELS)
  model.build((None, SIZE, SIZE, 1))
  images = tf.constant(np.random.default_rng(0).random((BATCH, SIZE, SIZE, 1), np.float32))
  seed = tf.constant([0, 1], tf.int64)

  unet_forward = tf.function(lambda x: model.unet(x, training=False))
  fns = {"unet": unet_forward}
  for m in COUNTS:
    fns[m] = tf.function(lambda x, m=m: model.sample(x, m, seed=seed))
  # The same draws with f_comb's TensorFlow ops instead of the native kernel (what exports run).
  noise = tf.random.stateless_normal([BATCH, 100, model.latent_dim], seed=[0, 1])
  fns["tf_ops100"] = tf.function(
      lambda x: model.sample_from_noise(x, noise, labels_only=True, native=False))
  # In turn within each round, so that a slow spell of the machine hits every ratio's numerator
  # and denominator alike; the best round of each.
  runs = {name: (lambda fn=fn: fn(images).numpy()) for name, fn in fns.items()}
  times = timeit_interleaved(runs, repeats=5, warmup=1, best=True)
  t_unet, t_tf_ops100 = times["unet"], times["tf_ops100"]
  t_sample = {m: times[m] for m in COUNTS}

  def naive(x, m):
    # What a port without the shared computation does: the whole network once per sample.
    outs = []
    for i in range(m):
      outs.append(model.sample(x, 1, seed=seed + i))
    return tf.concat(outs, axis=1)
  naive16 = tf.function(lambda x: naive(x, 16))
  t_naive16 = timeit(lambda: naive16(images).numpy(), repeats=3, warmup=1, best=True)

  per_image = lambda t: t / BATCH  # noqa: E731
  hpu = hpu_times()
  record = {
      "config": {"batch": BATCH, "size": SIZE, "channels": list(CHANNELS), "latent_dim": 6,
                 "num_classes": 2, "hpu": {"batch": HPU_BATCH, "architecture":
                                           "the release's LIDC defaults (hprob_unet)"}},
      **machine(),
      "unet_forward_s_per_image": per_image(t_unet),
      **{f"sample{m}_s_per_image": per_image(t_sample[m]) for m in COUNTS},
      "naive16_s_per_image": per_image(t_naive16),
      **{f"sample{m}_over_unet_forward": t_sample[m] / t_unet for m in COUNTS},
      "naive16_over_sample16": t_naive16 / t_sample[16],
      "fcomb_kernel": "native" if native.fcomb_sample_op() else "tensorflow ops (no compiler?)",
      "sample100_tensorflow_ops_over_unet_forward": t_tf_ops100 / t_unet,
      "hpu_forward_s_per_image": hpu["forward"],
      "hpu_sample16_s_per_image": hpu["sample16"],
      "hpu_sample16_over_hpu_forward": hpu["sample16"] / hpu["forward"],
      "hpu_sample16_over_sample16": hpu["sample16"] / per_image(t_sample[16]),
      "targets": {"sample16_over_unet_forward": "<= 1.7", "sample100_over_unet_forward": "<= 2.6",
                  "naive16_over_sample16": ">= 10"},
  }
  emit(record)


if __name__ == "__main__":
  main()
