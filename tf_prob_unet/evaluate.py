r"""Evaluates trained runs: `python -m tf_prob_unet.evaluate --model_dir=DIR --output_dir=OUT`.

A thin absl main over `evaluate_lib.run`. Several comma-separated `--model_dir`s are evaluated
side by side in one report.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_prob_unet import runtime  # noqa: E402  (imports no TensorFlow)

if __name__ == "__main__":
  runtime.prepare_process()  # oneDNN on, tcmalloc/jemalloc preloaded, before TensorFlow loads
  runtime.import_tensorflow_quietly()  # without its start-up notices

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tf_prob_unet import cli  # noqa: E402
from tf_prob_unet import evaluate_lib  # noqa: E402

flags.DEFINE_list("model_dir", [], "Training run directories (comma-separated).")
flags.DEFINE_string("output_dir", "", "Where metrics.json, report.md and the PNGs go.")
flags.DEFINE_list("num_samples", ["1", "4", "8", "16"], "Sample counts to score.")
flags.DEFINE_string("split", "test", "Dataset split.")
flags.DEFINE_string("data_dir", "", "TFDS data directory (empty: the one the run trained with).")
flags.DEFINE_integer("batch_size", 16, "Images per sampling batch.")
flags.DEFINE_integer("limit", 0, "Evaluate only the first N images (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of the latent draws.")
FLAGS = flags.FLAGS


def _evaluate():
  try:
    counts = tuple(int(n) for n in FLAGS.num_samples)
  except ValueError:
    raise ValueError(f"--num_samples: expected comma-separated integers, found "
                     f"{','.join(FLAGS.num_samples)!r}.") from None
  config = evaluate_lib.EvalConfig(
      model_dir=tuple(FLAGS.model_dir), output_dir=FLAGS.output_dir, num_samples=counts,
      split=FLAGS.split, data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size,
      limit=FLAGS.limit, seed=FLAGS.seed)
  evaluate_lib.run(config)


if __name__ == "__main__":
  app.run(cli.main_with_errors(_evaluate))
