"""The `pickle` config: the widely used `data_lidc.pickle`, unpickled without running code.

The file unpickles to a dict `{key: {"image", "masks", "series_uid"}}` with `key` =
`<patient id>_<suffix>`, `image` 128x128 in [0, 1] and `masks` a list of 4 binary 128x128 arrays.
A restricted unpickler resolves only NumPy's array-reconstruction functions and plain built-in
types: any other global (a class, a function such as `os.system`) stops the build with an error
naming it, so a tampered file cannot run code.

Images are scaled to uint8 (float values * 255, rounded; uint8 kept); masks are binarised with
`> 0`. Ids: `patient_id` = the key up to its first "_", `lesion_id` = "" (the pickle does not name
lesions), `slice_id` = the rest of the key, `id` = the key. The pickle has no split: patients are
split by `lidc_common.patient_split`.
"""

import os
import pickle

import numpy as np

from . import lidc_common

FILE_NAME = "data_lidc.pickle"
DESCRIPTION = ("The widely used data_lidc.pickle ({key: {'image', 'masks', 'series_uid'}}), read "
               "with a restricted unpickler; splits by a stable hash of the patient id "
               "(70/15/15).")
MANUAL_INSTRUCTIONS = f"""\
`pickle`: put `{FILE_NAME}` (the LIDC pickle linked from the README of
github.com/stefanknegt/Probabilistic-Unet-Pytorch) in the manual dir. It is unpickled with a
restricted unpickler that only allows NumPy arrays and plain Python types."""

_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric")
_ALLOWED = frozenset(
    [(m, f) for m in _NUMPY_MODULES for f in ("_reconstruct", "scalar", "_frombuffer")] +
    [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
     ("collections", "OrderedDict")] +
    [("builtins", t) for t in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes",
                               "bytearray", "int", "float", "complex", "bool")] +
    [("numpy.dtypes", name) for name in dir(np.dtypes) if name.endswith("DType")])


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that resolves only NumPy array/dtype reconstruction and plain built-in types."""

  def __init__(self, file, name):
    super().__init__(file, encoding="latin1")  # latin1: NumPy arrays pickled by Python 2.
    self._name = name

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise lidc_common.LidcError(
          f"{self._name}: expected only NumPy arrays and plain Python types, found the global "
          f"{module}.{name}; refusing to unpickle it (it could run code).")
    return super().find_class(module, name)


def load(path):
  """Unpickles `path` with `RestrictedUnpickler`.

  Raises:
    LidcError: missing or unreadable file, a forbidden global, or a corrupt pickle.
  """
  try:
    with open(path, "rb") as f:
      return RestrictedUnpickler(f, path).load()
  except OSError as e:
    raise lidc_common.LidcError(f"{path}: expected a readable file, {e.strerror.lower()}.") from None
  except lidc_common.LidcError:
    raise
  except Exception as e:  # Corrupt or truncated pickles raise many types.
    raise lidc_common.LidcError(f"{path}: expected a pickled dict, could not unpickle it "
                                f"({type(e).__name__}: {e}).") from None


def _numeric(value, what):
  array = np.asarray(value)
  if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
    raise lidc_common.LidcError(f"{what}: expected a numeric array, found dtype {array.dtype}.")
  return array


def to_example(key, value, path):
  """One pickle entry -> (id, example)."""
  where = f"{path}[{key!r}]"
  if not isinstance(key, str) or not isinstance(value, dict) or not {"image", "masks"} <= set(
      value):
    raise lidc_common.LidcError(
        f"{where}: expected a str key and a dict with 'image' and 'masks', found "
        f"{type(key).__name__} -> {sorted(value) if isinstance(value, dict) else type(value)}.")
  patient, _, suffix = key.partition("_")
  image = lidc_common.to_uint8_image(_numeric(value["image"], f"{where}['image']"),
                                     f"{where}['image']")
  masks = [_numeric(m, f"{where}['masks'][{i}]") for i, m in enumerate(value["masks"])]
  return key, lidc_common.make_example(image, masks, patient, "", suffix, key, where)


def _examples(data, path, keys):
  for key in keys:
    yield to_example(key, data[key], path)


def split_generators(manual_dir):
  """{split: iterator of (key, example)}, patients split by `lidc_common.patient_split`.

  The pickle is loaded once and shared by the three generators.
  """
  path = os.path.join(manual_dir, FILE_NAME)
  if not os.path.isfile(path):
    raise lidc_common.LidcError(
        f"lidc/pickle: expected {path}, it is missing (manual dir holds: "
        f"{lidc_common.list_manual_dir(manual_dir)}).")
  data = load(path)
  if not isinstance(data, dict):
    raise lidc_common.LidcError(f"{path}: expected a dict at the top level, found "
                                f"{type(data).__name__}.")
  by_split = {split: [] for split in lidc_common.SPLITS}
  for key in sorted(data, key=str):
    if not isinstance(key, str):
      raise lidc_common.LidcError(f"{path}: expected str keys, found {key!r}.")
    by_split[lidc_common.patient_split(key.partition("_")[0])].append(key)
  return {split: _examples(data, path, keys) for split, keys in by_split.items()}
