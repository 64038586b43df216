"""A user's own 2-D multi-rater files -> a prepared TFDS dataset, by name (flag-free).

`run(ImportConfig(...))` scans the source (`user_data_lib.scan`: every case read and checked
once), prints what it found, and prepares the dataset `name` under `data_dir` with the
`user_data` builder. TFDS writes into a temporary folder and renames it when every split is
written, so a failed import leaves nothing that looks prepared. The train, evaluate and sample
binaries then take `--dataset=NAME --data_dir=DIR`.
"""

import dataclasses
import importlib
import os
import re
import shutil

import tensorflow_datasets as tfds

from tf_prob_unet import input_pipeline

_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


def builder_module():
  """The `user_data` builder module (installed package, else this checkout's `datasets/`)."""
  try:
    return importlib.import_module("tf_prob_unet_datasets.user_data.user_data_dataset_builder")
  except ModuleNotFoundError:
    return input_pipeline._local_builder_module("user_data")  # pylint: disable=protected-access


def lib_module():
  """The `user_data_lib` module next to the builder (options, scan, errors)."""
  return importlib.import_module(builder_module().__name__.rpartition(".")[0] + ".user_data_lib")


@dataclasses.dataclass
class ImportConfig:
  """What to import and where.

  Attributes:
    name: the dataset's name (snake_case; not the name of a builder that exists).
    data_dir: TFDS data directory ("" : TFDS's default).
    options: a `user_data_lib.ImportOptions` (the source and how to read it).
    overwrite: replace a dataset of this name already prepared in `data_dir`.
  """
  name: str
  data_dir: str
  options: object
  overwrite: bool = False


def _check_name(name):
  if not _NAME_RE.match(name or ""):
    raise ValueError(f"--name: expected a snake_case name (a-z, 0-9, _; starting with a "
                     f"letter), found {name!r}.")
  local = os.path.join(input_pipeline.REPO_DATASETS_DIR, name)
  if name == "user_data" or os.path.isdir(local) or name in tfds.list_builders():
    raise ValueError(f"--name: expected a name that no builder uses, found {name!r} (a "
                     f"built-in dataset).")


def run(config, log=print):
  """Imports `config.options.source` as the dataset `config.name`; returns the builder.

  Raises:
    ValueError: one line naming the bad input (file, key or flag), what was expected and what
      was found; nothing is left prepared.
  """
  _check_name(config.name)
  lib = lib_module()
  data_dir = os.path.expanduser(config.data_dir or tfds.core.constants.DATA_DIR)
  dataset_dir = os.path.join(data_dir, config.name)
  prepared = os.path.join(dataset_dir, builder_module().VERSION)
  if os.path.isdir(prepared) and not config.overwrite:
    raise ValueError(f"--name: {config.name!r} is already prepared in {prepared}; pass "
                     f"--overwrite to replace it.")
  existed = os.path.isdir(dataset_dir)
  scan = lib.scan(config.options, log=log)
  log(f"{config.name}: {scan.summary()}")
  missing = [s for s in lib.SPLITS if s not in scan.splits]
  if missing:
    log(f"Warning: no cases in {', '.join(missing)}; training needs train and validation, "
        f"evaluation the split it is given.")
  if os.path.isdir(prepared):
    shutil.rmtree(prepared)
  builder = builder_module().make_builder(config.name, scan, data_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(verify_ssl=True))
  except Exception as e:
    if not existed and os.path.isdir(dataset_dir) and not os.listdir(dataset_dir):
      os.rmdir(dataset_dir)
    if isinstance(e, lib.ImportError_):
      raise
    message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise ValueError(f"{config.options.source}: the import of {config.name!r} failed, nothing "
                     f"was prepared ({message}).") from e
  log(f"Prepared {config.name} in {builder.data_dir}: " + ", ".join(
      f"{s} {builder.info.splits[s].num_examples}" for s in scan.splits) +
      f". Train with --dataset={config.name} --data_dir={data_dir}.")
  return builder
