"""Models shipped inside the package: small run directories, read-only.

Each shipped model is a folder `tf_prob_unet/pretrained/NAME/` holding

- `model_config.json`: the model's name, constructor arguments, input shape and dataset (the
  run's, with `data_dir` emptied);
- `flags.cfg`: the training flags (`--flagfile=.../flags.cfg` repeats the training), without
  the training machine's data directory;
- `checkpoints/`: a weights-only checkpoint (the model's variables keyed by path, and the
  step; no optimizer or input state) that `run_dir.load_model` reads;
- `MODEL_CARD.md`: what the model is, the data and its licence, the training command, commit
  and step, metrics, intended use and limits, and one line `sha256 <hex> checkpoints/<file>`
  per checkpoint file (`verify` checks them).

Every binary that reads a run takes `--model_dir=pretrained:NAME` (or the folder's path):

    python -m tf_prob_unet.pretrained                 # NAME, path and summary of each
    python -m tf_prob_unet.pretrained NAME            # the path only
    python -m tf_prob_unet.sample --model_dir=pretrained:NAME --image=crop.png --output_dir=out

`python -m tf_prob_unet.pretrained pack --model_dir=RUN --name=NAME --output_dir=DIR` makes such
a folder from a training run (`tf_prob_unet.pretrained.pack`). This module imports no
TensorFlow.
"""

import hashlib
import importlib.resources
import os
import re

CARD_FILE = "MODEL_CARD.md"
CONFIG_FILE = "model_config.json"  # run_dir.MODEL_CONFIG_FILE (without importing TensorFlow)
CHECKPOINT_DIR = "checkpoints"     # run_dir.CHECKPOINT_DIR
COMMANDS = ("pack", "verify")      # words of `python -m tf_prob_unet.pretrained`, never names
CHECKSUM_LINE = re.compile(r"^sha256 ([0-9a-f]{64}) (\S+)$", re.MULTILINE)


def directory():
  """The folder that holds the shipped models (this package's)."""
  return os.fspath(importlib.resources.files(__name__))


def names():
  """The shipped models' names, sorted (folders of `directory()` with a `model_config.json`)."""
  root = directory()
  return sorted(n for n in os.listdir(root)
                if os.path.isfile(os.path.join(root, n, CONFIG_FILE)))


def path(name):
  """The absolute path of the shipped model `name`.

  Raises:
    ValueError: no shipped model has that name (the available ones are listed).
  """
  if name not in names():
    available = ", ".join(names()) or "none (this installation ships no models)"
    raise ValueError(f"pretrained model: expected one of {available}; found {name!r}.")
  return os.path.join(directory(), name)


def _folder(name_or_path):
  if os.path.isdir(name_or_path):
    return name_or_path
  return path(name_or_path)


def card(name_or_path):
  """The text of a shipped (or packed) model's `MODEL_CARD.md`."""
  folder = _folder(name_or_path)
  card_path = os.path.join(folder, CARD_FILE)
  if not os.path.isfile(card_path):
    raise ValueError(f"pretrained model: expected {CARD_FILE} in {folder!r}, found none.")
  with open(card_path, encoding="utf-8") as f:
    return f.read()


def summary(name_or_path):
  """The one-line summary of a model card: its first line of text after the title."""
  for line in card(name_or_path).splitlines():
    if line.strip() and not line.startswith("#"):
      return line.strip()
  return ""


def checksums(card_text):
  """`{relative path: sha256 hex}` of the `sha256 <hex> <path>` lines of a model card."""
  return {rel: digest for digest, rel in CHECKSUM_LINE.findall(card_text)}


def sha256(file_path):
  """The sha256 hex digest of a file."""
  digest = hashlib.sha256()
  with open(file_path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def verify(name_or_path):
  """Checks that a model's checkpoint files are the ones its card's checksums name.

  Every file under `checkpoints/` must be listed in the card and every listed file must exist
  with that sha256.

  Args:
    name_or_path: a shipped model's name, or the path of a packed model folder.

  Returns:
    `{relative path: sha256 hex}` of the checked files.

  Raises:
    ValueError: a missing, unlisted or changed checkpoint file (one line naming it).
  """
  folder = _folder(name_or_path)
  expected = checksums(card(folder))
  if not expected:
    raise ValueError(f"pretrained model: expected 'sha256 <hex> <file>' lines in "
                     f"{os.path.join(folder, CARD_FILE)!r}, found none.")
  checkpoint_dir = os.path.join(folder, CHECKPOINT_DIR)
  present = sorted(f"{CHECKPOINT_DIR}/{f}" for f in os.listdir(checkpoint_dir)) if os.path.isdir(
      checkpoint_dir) else []
  unlisted = [f for f in present if f not in expected]
  if unlisted:
    raise ValueError(f"pretrained model {folder!r}: expected only the checkpoint files its "
                     f"{CARD_FILE} lists, found {', '.join(unlisted)} as well.")
  for rel, digest in sorted(expected.items()):
    file_path = os.path.join(folder, *rel.split("/"))
    if not os.path.isfile(file_path):
      raise ValueError(f"pretrained model {folder!r}: expected {rel} (listed in {CARD_FILE}), "
                       f"found no such file.")
    found = sha256(file_path)
    if found != digest:
      raise ValueError(f"pretrained model {folder!r}: expected {rel} with sha256 {digest} (as "
                       f"{CARD_FILE} says), found sha256 {found}: the file was changed or "
                       f"damaged.")
  return expected
