"""The recorded splits of the LIDC layouts without a split of their own, and the check against them.

`lidc_common.patient_split` assigns patients to splits by a hash of their id. What it gave on the
real data is on record in `splits/<layout>_<split>.txt` beside the builder: one line per patient,
`<patient_id> <number of examples>`, after `#` comment lines naming the source data. A build
(`check_split`, called by the builder while it writes each split) and a prepared dataset
(`check_prepared`) are checked against the record:

* every patient the record knows must be in the split the record has it in (the split rule did
  not change);
* where the data matches the record, i.e. a split holds exactly the recorded patients, each
  patient must have the recorded number of examples (the data and its reading did not change).

Data that is not the recorded release (another version of the layout, a subset, test data) is
checked for the first point only. Layouts without record files are not checked.
"""

import collections
import os
import tempfile

from . import lidc_common

RECORD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")


def record_path(layout, split, directory=None):
  """`<directory or RECORD_DIR>/<layout>_<split>.txt`."""
  return os.path.join(directory or RECORD_DIR, f"{layout}_{split}.txt")


def read_record(layout, directory=None):
  """`{split: {patient_id: examples}}` of a layout, or None if it has no record files.

  Raises:
    LidcError: a record file is missing or has a malformed line (naming the file and line).
  """
  paths = {split: record_path(layout, split, directory) for split in lidc_common.SPLITS}
  if not any(os.path.exists(p) for p in paths.values()):
    return None
  record = {}
  for split, path in paths.items():
    if not os.path.exists(path):
      raise lidc_common.LidcError(f"{path}: expected the record of split {split!r} beside the "
                                  f"other splits of lidc/{layout}, it is missing.")
    record[split] = {}
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        line = line.strip()
        if not line or line.startswith("#"):
          continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] in record[split]:
          raise lidc_common.LidcError(f"{path}:{number}: expected '<patient_id> <examples>' "
                                      f"with a new patient, found {line!r}.")
        record[split][parts[0]] = int(parts[1])
  return record


def record_text(layout, split, counts, source):
  """The text of one record file: comment lines, then `<patient_id> <examples>` sorted by id."""
  header = [f"# lidc/{layout}, split {split}: {len(counts)} patients, "
            f"{sum(counts.values())} examples.",
            "# Made by lidc_common.patient_split (SHA-256 of the patient id, 70/15/15) from",
            f"# {source}.",
            "# <patient_id> <examples>"]
  return "\n".join(header + [f"{p} {counts[p]}" for p in sorted(counts)]) + "\n"


def write_record(layout, observed, source, directory=None):
  """Writes `{split: {patient_id: examples}}` as the record of `layout` (each file atomically).

  Args:
    layout: the reader's name (`slices`, `pickle`, `raw`).
    observed: `{split: {patient_id: examples}}`, e.g. `observed_counts(builder)`.
    source: what the data was (written into the files' comments).
    directory: where to write (default: `RECORD_DIR`, beside the builder).
  """
  directory = directory or RECORD_DIR
  os.makedirs(directory, exist_ok=True)
  for split in lidc_common.SPLITS:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(record_text(layout, split, observed.get(split, {}), source))
    os.replace(tmp, record_path(layout, split, directory))


def split_problems(record, split, counts):
  """What disagrees between one split's `{patient_id: examples}` and the record (strings).

  Returns:
    `(matches, problems)`: whether the split holds exactly the recorded patients (then the
    counts were compared too), and the disagreements, empty if none.
  """
  recorded_split = {p: s for s, patients in record.items() for p in patients}
  problems = [f"patient {p} in {split}, recorded in {recorded_split[p]}"
              for p in sorted(counts) if recorded_split.get(p, split) != split]
  matches = set(counts) == set(record[split])
  if matches:
    problems += [f"patient {p} with {counts[p]} examples, recorded {record[split][p]}"
                 for p in sorted(counts) if counts[p] != record[split][p]]
  return matches, problems


def check_split(layout, split, counts, directory=None):
  """Checks one split of a build against the record of `layout` (no record: nothing to check).

  Args:
    layout: the reader's name.
    split: `train`, `validation` or `test`.
    counts: `{patient_id: examples}` of the split.
    directory: the record's folder (default `RECORD_DIR`).

  Returns:
    None (no record), True (the split is the recorded one and agrees with it) or False (other
    data; the patients the record knows are in their recorded split).

  Raises:
    LidcError: one line naming the record file, what it expects and what was found.
  """
  record = read_record(layout, directory)
  if record is None:
    return None
  matches, problems = split_problems(record, split, counts)
  if problems:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise lidc_common.LidcError(
        f"{record_path(layout, split, directory)}: expected the recorded split of lidc/{layout} "
        f"({len(record[split])} patients, {sum(record[split].values())} examples in {split}), "
        f"found {problems[0]}{more}.")
  return matches


def counted(examples, layout, split, directory=None):
  """Passes `(key, example)` pairs through, then checks the split's patients (`check_split`)."""
  counts = collections.Counter()
  for key, example in examples:
    counts[example["patient_id"]] += 1
    yield key, example
  check_split(layout, split, counts, directory)


def observed_counts(builder):
  """`{split: {patient_id: examples}}` of a prepared lidc builder (images are not decoded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  skip = {"image": tfds.decode.SkipDecoding(), "masks": tfds.decode.SkipDecoding()}
  observed = {}
  for split in lidc_common.SPLITS:
    if split not in builder.info.splits:
      continue
    ds = builder.as_dataset(split=split, decoders=skip).map(lambda ex: ex["patient_id"])
    observed[split] = dict(collections.Counter(p.decode() for p in tfds.as_numpy(ds)))
  return observed


def check_prepared(builder, directory=None):
  """Checks every split of a prepared lidc dataset against its layout's record.

  Returns:
    `{split: None | True | False}` as `check_split`.

  Raises:
    LidcError: as `check_split`.
  """
  layout = builder.builder_config.reader
  return {split: check_split(layout, split, counts, directory)
          for split, counts in observed_counts(builder).items()}
