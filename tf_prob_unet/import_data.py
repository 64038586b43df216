r"""Imports a user's own 2-D multi-rater data as a prepared TFDS dataset.

  python -m tf_prob_unet.import_data --name=my_data --data_dir=~/tensorflow_datasets \
      --source=my_folder --format=folder \
      --image='{case}/image.png' --masks='{case}/rater_*.png'

Then `python -m tf_prob_unet.train --dataset=my_data --data_dir=~/tensorflow_datasets ...`.
See docs/your_own_data.md.
"""

from absl import app
from absl import flags

from tf_prob_unet import import_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("name", None, "The dataset's name (snake_case); --dataset=NAME later.")
flags.DEFINE_string("data_dir", "", "TFDS data directory (empty: TFDS's default "
                    "~/tensorflow_datasets).")
flags.DEFINE_string("source", None, "A pickle file (--format=pickle) or a folder "
                    "(--format=folder).")
flags.DEFINE_enum("format", "folder", ["pickle", "folder"], "The source's format.")
flags.DEFINE_string("image", "", "Folder format: the image pattern relative to --source; "
                    "{name} = one or more path components or part of a file name, * = any "
                    "characters inside one component.")
flags.DEFINE_string("masks", "", "Folder format: the mask pattern (same placeholders); a case's "
                    "matches, sorted, are its raters.")
flags.DEFINE_integer("slice_axis", 2, "Axis along which 3-D NIfTI/.npy volumes are cut into "
                     "2-D slices.")
flags.DEFINE_enum("slices", "all", ["all", "annotated"], "Keep every slice of a volume, or those "
                  "where any rater marks something.")
flags.DEFINE_bool("split_from_path", False, "Take the split from a component of the case key "
                  "(train/training, val/validation, test/testing).")
flags.DEFINE_string("group", None, "Regex on the case key; its first capture group is the group "
                    "id hashed into 70/15/15 splits (default: the whole key).")
flags.DEFINE_integer("num_classes", None, "Classes K (default: inferred from the masks, >= 2).")
flags.DEFINE_list("class_values", None, "Mask values mapped to classes 0..K-1, e.g. 0,128,255.")
flags.DEFINE_list("image_size", None, "H,W: resize images (bilinear) and masks (nearest).")
flags.DEFINE_integer("pad_to_multiple", 0, "Pad images and masks (bottom/right) to a multiple "
                     "of this, e.g. 2**(levels-1) of the U-Net (0: no padding).")
flags.DEFINE_bool("overwrite", False, "Replace a dataset of this name already in --data_dir.")
flags.mark_flags_as_required(["name", "source"])


def _ints(values, flag):
  if values is None:
    return None
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--{flag}: expected integers separated by commas, found "
                         f"{','.join(values)!r}.") from None


def config_from_flags():
  lib = import_lib.lib_module()
  options = lib.ImportOptions(
      source=FLAGS.source, format=FLAGS.format, image=FLAGS.image, masks=FLAGS.masks,
      slice_axis=FLAGS.slice_axis, slices=FLAGS.slices, split_from_path=FLAGS.split_from_path,
      group=FLAGS.group, num_classes=FLAGS.num_classes,
      class_values=_ints(FLAGS.class_values, "class_values"),
      image_size=_ints(FLAGS.image_size, "image_size"), pad_to_multiple=FLAGS.pad_to_multiple)
  return import_lib.ImportConfig(name=FLAGS.name, data_dir=FLAGS.data_dir, options=options,
                                 overwrite=FLAGS.overwrite)


def main(argv):
  del argv
  try:
    import_lib.run(config_from_flags())
  except ValueError as e:
    raise SystemExit(f"import_data: {e}") from None


if __name__ == "__main__":
  app.run(main)
