"""What the training augmentation (`--augment`) costs per Cityscapes-size example.

Prints one JSON line. `augment.augment_example` (the reference's Cityscapes pipeline: mirror,
elastic deformation, rotation, scaling, crop, gamma) runs as one compiled function on a 256x512
RGB image with its label and cue, a new key each call. `augment_s_per_example` is the median
wall time of one call (single-threaded: tf.data runs it on several examples in parallel).

Usage: python bench/augment.py [--repeats 20] [--height 256] [--width 512]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the binaries (tf_prob_unet/runtime.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import emit, machine, timeit  # noqa: E402
from tf_prob_unet import augment  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=512)
  args = parser.parse_args()
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)

  rng = np.random.default_rng(0)
  shape = (args.height, args.width)
  example = {"image": tf.constant(rng.integers(0, 256, shape + (3,)), tf.uint8),
             "label": tf.constant(rng.integers(0, 19, shape), tf.uint8),
             "cue": tf.constant(rng.integers(0, 19, shape), tf.uint8)}
  fn = tf.function(lambda key: augment.augment_example(example, key))
  step = iter(range(10**9))
  run = lambda: fn(augment.example_key(0, "frame", next(step)))["image"].numpy()  # noqa: E731
  seconds = timeit(run, repeats=args.repeats, warmup=2)
  emit({
      "config": {"height": args.height, "width": args.width, "channels": 3,
                 "label_maps": ["label", "cue"], "repeats": args.repeats, "threads": 1,
                 "statistic": "median"},
      **machine(),
      "augment_s_per_example": seconds,
  })


if __name__ == "__main__":
  main()
