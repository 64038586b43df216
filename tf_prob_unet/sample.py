r"""Samples a user's own images: `python -m tf_prob_unet.sample --model_dir=DIR --image=a.png`.

A thin absl main over `sample_lib.run`: `--model_dir` (a training run) or `--saved_model` (an
export's version directory), `--image` (PNG, or .npy of raw CT values; comma-separated),
`--num_samples`, `--output_dir`. See `sample_lib` for what is written and the preprocessing.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_prob_unet import runtime  # noqa: E402  (imports no TensorFlow)

if __name__ == "__main__":
  runtime.import_tensorflow_quietly()  # without its start-up notices

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tf_prob_unet import cli  # noqa: E402
from tf_prob_unet import sample_lib  # noqa: E402

_D = sample_lib.SampleConfig()
flags.DEFINE_string("model_dir", "", "Training run directory (or use --saved_model).")
flags.DEFINE_string("saved_model", "", "Export version directory BASE/NAME/N (or --model_dir).")
flags.DEFINE_list("image", [], "Image files: PNG, or .npy of raw CT values (HU).")
flags.DEFINE_integer("num_samples", _D.num_samples, "Samples per image.")
flags.DEFINE_string("output_dir", "", "Where the masks, grids and uncertainty maps go.")
flags.DEFINE_integer("seed", _D.seed, "Seed of the latent draws (same seed, same samples).")
flags.DEFINE_list("ct_window", [str(v) for v in _D.ct_window],
                  "LOW,HIGH Hounsfield units mapped to 0..255 for .npy inputs.")
FLAGS = flags.FLAGS


def _sample():
  try:
    window = tuple(float(v) for v in FLAGS.ct_window)
  except ValueError:
    raise ValueError(f"--ct_window: expected two numbers LOW,HIGH, found "
                     f"{','.join(FLAGS.ct_window)!r}.") from None
  sample_lib.run(sample_lib.SampleConfig(
      model_dir=FLAGS.model_dir, saved_model=FLAGS.saved_model, image=tuple(FLAGS.image),
      num_samples=FLAGS.num_samples, output_dir=FLAGS.output_dir, seed=FLAGS.seed,
      ct_window=window))


if __name__ == "__main__":
  app.run(cli.main_with_errors(_sample))
