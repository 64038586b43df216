r"""Makes cue files: `python -m tf_prob_unet.make_cues --model_dir=RUN --output_dir=MANUAL/cues`.

A thin absl main over `make_cues_lib.run`: a network trained by this package on
`cityscapes_ambiguous/rgb` (e.g. `--model=unet`) labels every image, and the label maps are written
where the `cue` config of `cityscapes_ambiguous` reads them.
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
from tf_prob_unet import make_cues_lib  # noqa: E402

_D = make_cues_lib.MakeCuesConfig()
flags.DEFINE_string("model_dir", _D.model_dir, "Training run of the cue network.")
flags.DEFINE_string("output_dir", _D.output_dir, "Where the cues go: the manual directory's cues/.")
flags.DEFINE_string("data_dir", _D.data_dir, "TFDS data directory (empty: the run's).")
flags.DEFINE_list("splits", list(_D.splits), "Splits to label.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Images per batch.")
FLAGS = flags.FLAGS


def _make_cues():
  make_cues_lib.run(make_cues_lib.MakeCuesConfig(
      model_dir=FLAGS.model_dir, output_dir=FLAGS.output_dir, data_dir=FLAGS.data_dir,
      splits=tuple(FLAGS.splits), batch_size=FLAGS.batch_size))


if __name__ == "__main__":
  app.run(cli.main_with_errors(_make_cues))
