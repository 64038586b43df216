r"""Imports a user's own 2-D multi-rater data as a prepared TFDS dataset.

  python -m tf_prob_unet.import_data --name=my_data --data_dir=~/tensorflow_datasets \
      --source=my_folder --format=folder \
      --image='{case}/image.png' --masks='{case}/rater_*.png'

Then `python -m tf_prob_unet.train --dataset=my_data --data_dir=$HOME/tensorflow_datasets ...`.
See docs/your_own_data.md.
"""

from absl import app
from absl import flags

from tf_prob_unet import import_lib


def define_flags(fv):
  """Defines the binary's flags on the FlagValues `fv` (absl's global `flags.FLAGS` when run)."""
  d = dict(flag_values=fv)
  flags.DEFINE_string("name", None, "The dataset's name (snake_case); --dataset=NAME later.", **d)
  flags.DEFINE_string("data_dir", "", "TFDS data directory (empty: TFDS's default "
                      "~/tensorflow_datasets).", **d)
  flags.DEFINE_string("source", None, "A pickle file (--format=pickle) or a folder "
                      "(--format=folder).", **d)
  flags.DEFINE_enum("format", "folder", ["pickle", "folder"], "The source's format.", **d)
  flags.DEFINE_string("image", "", "Folder format: the image pattern relative to --source; "
                      "{name} = one or more path components or part of a file name, * = any "
                      "characters inside one component.", **d)
  flags.DEFINE_string("masks", "", "Folder format: the mask pattern (same placeholders); a "
                      "case's matches, sorted, are its raters.", **d)
  flags.DEFINE_integer("slice_axis", 2, "Axis along which 3-D NIfTI/.npy volumes are cut into "
                       "2-D slices.", **d)
  flags.DEFINE_enum("slices", "all", ["all", "annotated"], "Keep every slice of a volume, or "
                    "those where any rater marks something.", **d)
  flags.DEFINE_bool("split_from_path", False, "Take the split from a component of the case "
                    "key (train/training, val/validation, test/testing).", **d)
  flags.DEFINE_string("group", None, "Regex on the case key; its first capture group is the "
                      "group id hashed into 70/15/15 splits (default: the whole key).", **d)
  flags.DEFINE_integer("num_classes", None, "Classes K (default: inferred from the masks, "
                       ">= 2).", **d)
  flags.DEFINE_list("class_values", None, "Mask values mapped to classes 0..K-1, e.g. "
                    "0,128,255.", **d)
  flags.DEFINE_list("image_size", None, "H,W: resize images (bilinear) and masks (nearest).",
                    **d)
  flags.DEFINE_integer("pad_to_multiple", 0, "Pad images and masks (bottom/right) to a "
                       "multiple of this, e.g. 2**(levels-1) of the U-Net (0: no padding).", **d)
  flags.DEFINE_bool("overwrite", False, "Replace a dataset of this name already in --data_dir.",
                    **d)
  flags.mark_flags_as_required(["name", "source"], **d)


def _ints(values, flag):
  if values is None:
    return None
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}: expected integers separated by commas, found "
                         f"{','.join(values)!r}.") from None


def config_from_flags(fv):
  """An `import_lib.ImportConfig` from the parsed flags `fv`."""
  options = import_lib.lib_module().ImportOptions(
      source=fv.source, format=fv.format, image=fv.image, masks=fv.masks,
      slice_axis=fv.slice_axis, slices=fv.slices, split_from_path=fv.split_from_path,
      group=fv.group, num_classes=fv.num_classes,
      class_values=_ints(fv.class_values, "class_values"),
      image_size=_ints(fv.image_size, "image_size"), pad_to_multiple=fv.pad_to_multiple)
  return import_lib.ImportConfig(name=fv.name, data_dir=fv.data_dir, options=options,
                                 overwrite=fv.overwrite)


def main(argv):
  del argv
  try:
    import_lib.run(config_from_flags(flags.FLAGS))
  except ValueError as e:
    raise SystemExit(f"import_data: {e}") from None


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
