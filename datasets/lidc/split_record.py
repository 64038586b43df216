"""The recorded splits of the LIDC layouts without a split of their own, and the check against them.

`lidc_common.patient_split` assigns patients to splits by a hash of their id. The split of every
layout that relies on it (`slices`, `pickle`, `raw`) is on record in `splits/<layout>_<split>.txt`
beside the builder. A record file has `#` comment lines naming its source, at most one totals
line, then one line per patient:

  all splits: <patients> patients, <examples> examples   (optional; either may be `unknown`)
  <patient_id> <examples>                                 (the patient's examples in the split)
  <patient_id>                                            (the patient's examples not recorded)

`slices` lists the patients of the recorded release with their examples; `pickle` and `raw` list
every patient id of the LIDC-IDRI collection (`COLLECTION_IDS`) without examples, the totals line
holding what is known of the whole release. A build (`counted` and `beam_counted` while the
builder writes each split, then `check_all` over the splits) and a prepared dataset
(`check_prepared`) are checked against the record:

* every patient the record lists must be in the split that lists it (the split rule and the
  patient ids did not change), and no patient is in two splits;
* where a split holds exactly the listed patients (the recorded release), every patient with a
  recorded number of examples must have that number;
* where the totals line gives the release's patients and examples and the data holds that many
  patients (the recorded release), the data must hold that many examples.

Patients the record does not list (ids outside the collection, test data) are checked for being
in one split only. Layouts without record files are not checked.
"""

import collections
import dataclasses
import json
import os
import re
import tempfile
import textwrap

from . import lidc_common

RECORD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
# The LIDC-IDRI collection's patient ids (TCIA holds 1,010 patients under them).
COLLECTION_IDS = tuple(f"LIDC-IDRI-{n:04d}" for n in range(1, 1013))
# Written by a build into the dataset folder: `{patient_id: examples}` of each split.
OBSERVED_PREFIX = "patients-"
_TOTALS = re.compile(r"all splits: (\d+|unknown) patients, (\d+|unknown) examples")


@dataclasses.dataclass(frozen=True)
class Record:
  """The record of one layout.

  Attributes:
    layout: the reader's name.
    directory: the folder of the record files.
    splits: `{split: {patient_id: examples or None (not recorded)}}`.
    total_patients: patients of the recorded release in all splits, or None (unknown).
    total_examples: examples of the recorded release in all splits, or None (unknown).
  """
  layout: str
  directory: str
  splits: dict
  total_patients: int | None = None
  total_examples: int | None = None

  def path(self, split="*"):
    return record_path(self.layout, split, self.directory)

  def split_of(self):
    """`{patient_id: split}` of every listed patient."""
    return {p: split for split, patients in self.splits.items() for p in patients}

  def describe(self, split):
    """What the record expects of a split, e.g. '119 patients, 2145 examples in test'."""
    patients = self.splits[split]
    if None in patients.values():
      return f"{len(patients)} patients in {split}, examples not recorded"
    return f"{len(patients)} patients, {sum(patients.values())} examples in {split}"


def record_path(layout, split, directory=None):
  """`<directory or RECORD_DIR>/<layout>_<split>.txt`."""
  return os.path.join(directory or RECORD_DIR, f"{layout}_{split}.txt")


def _number(text):
  return None if text == "unknown" else int(text)


def read_record(layout, directory=None):
  """The `Record` of a layout, or None if it has no record files.

  Raises:
    LidcError: a record file is missing, has a malformed line, lists a patient twice or
      disagrees with another file's totals (naming the file and line).
  """
  directory = directory or RECORD_DIR
  paths = {split: record_path(layout, split, directory) for split in lidc_common.SPLITS}
  if not any(os.path.exists(p) for p in paths.values()):
    return None
  splits, listed_in, totals, totals_where = {}, {}, None, None
  for split, path in paths.items():
    if not os.path.exists(path):
      raise lidc_common.LidcError(f"{path}: expected the record of split {split!r} beside the "
                                  f"other splits of lidc/{layout}, it is missing.")
    splits[split] = {}
    file_totals = False
    with open(path, encoding="utf-8") as f:
      for number, line in enumerate(f, 1):
        line = line.strip()
        if not line or line.startswith("#"):
          continue
        where = f"{path}:{number}"
        match = _TOTALS.fullmatch(line)
        if match:
          found = (_number(match[1]), _number(match[2]))
          if file_totals or (totals is not None and found != totals):
            raise lidc_common.LidcError(f"{where}: expected one totals line per file, the same "
                                        f"as {totals_where}, found {line!r}.")
          totals, totals_where, file_totals = found, where, True
          continue
        parts = line.split()
        if not 1 <= len(parts) <= 2 or (len(parts) == 2 and not parts[1].isdigit()):
          raise lidc_common.LidcError(f"{where}: expected '<patient_id> [<examples>]' or "
                                      f"'all splits: <n> patients, <n> examples', found "
                                      f"{line!r}.")
        if parts[0] in listed_in:
          raise lidc_common.LidcError(f"{where}: expected each patient listed once, found "
                                      f"{parts[0]} again (also in {listed_in[parts[0]]}).")
        listed_in[parts[0]] = where
        splits[split][parts[0]] = int(parts[1]) if len(parts) == 2 else None
  total_patients, total_examples = totals or (None, None)
  return Record(layout, directory, splits, total_patients, total_examples)


def collection_split():
  """`{split: {patient_id: None}}`: every id of `COLLECTION_IDS` in its split."""
  splits = {split: {} for split in lidc_common.SPLITS}
  for patient in COLLECTION_IDS:
    splits[lidc_common.patient_split(patient)][patient] = None
  return splits


def record_text(layout, split, counts, source, totals=None):
  """The text of one record file: comment lines, the totals line, then the patients by id.

  Args:
    layout: the reader's name.
    split: the split.
    counts: `{patient_id: examples or None}` of the split.
    source: what the lists were made from (wrapped into comment lines).
    totals: `(patients, examples)` of the release in all splits (None: unknown), or None for
      no totals line.
  """
  known = None not in counts.values()
  size = (f"{len(counts)} patients, {sum(counts.values())} examples." if known else
          f"{len(counts)} patients (examples per patient not recorded).")
  header = [f"# lidc/{layout}, split {split}: {size}",
            "# Made by lidc_common.patient_split (SHA-256 of the patient id, 70/15/15) from"]
  header += ["# " + line for line in textwrap.wrap(source + ".", 94)]
  if totals is not None:
    header.append("all splits: " + ", ".join(
        f"{'unknown' if n is None else n} {what}" for n, what in zip(totals,
                                                                     ("patients", "examples"))))
  header.append("# <patient_id> <examples>" if known else "# <patient_id>")
  lines = [p if counts[p] is None else f"{p} {counts[p]}" for p in sorted(counts)]
  return "\n".join(header + lines) + "\n"


def write_record(layout, observed, source, directory=None, totals=None):
  """Writes `{split: {patient_id: examples or None}}` as the record of `layout` (atomically).

  Args:
    layout: the reader's name (`slices`, `pickle`, `raw`).
    observed: `{split: {patient_id: examples or None}}`, e.g. `observed_counts(builder)` or
      `collection_split()`.
    source: what the data was (written into the files' comments).
    directory: where to write (default: `RECORD_DIR`, beside the builder).
    totals: see `record_text`.
  """
  directory = directory or RECORD_DIR
  os.makedirs(directory, exist_ok=True)
  for split in lidc_common.SPLITS:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(record_text(layout, split, observed.get(split, {}), source, totals))
    os.replace(tmp, record_path(layout, split, directory))


def split_problems(record, split, counts):
  """What disagrees between one split's `{patient_id: examples}` and the record (strings).

  Returns:
    `(matches, problems)`: whether the split holds exactly the listed patients (then the
    recorded counts were compared too), and the disagreements, empty if none.
  """
  split_of = record.split_of()
  problems = [f"patient {p} in {split}, recorded in {split_of[p]}"
              for p in sorted(counts) if split_of.get(p, split) != split]
  listed = record.splits[split]
  matches = set(counts) == set(listed)
  if matches:
    problems += [f"patient {p} with {counts[p]} examples, recorded {listed[p]}"
                 for p in sorted(counts) if listed[p] is not None and counts[p] != listed[p]]
  return matches, problems


def check_split_against(record, split, counts):
  """Checks one split's `{patient_id: examples}` against a `Record` (None: nothing to check).

  Returns:
    None (no record), True (the split is the recorded one and agrees with it) or False (other
    data; the listed patients are in their recorded split).

  Raises:
    LidcError: one line naming the record file, the layout and split, what the record expects
      and what was found.
  """
  if record is None:
    return None
  matches, problems = split_problems(record, split, counts)
  if problems:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise lidc_common.LidcError(
        f"{record.path(split)}: expected the recorded split of lidc/{record.layout} "
        f"({record.describe(split)}), found {problems[0]}{more}.")
  return matches


def check_split(layout, split, counts, directory=None):
  """`check_split_against` with the record of `layout` read from `directory` (or `RECORD_DIR`)."""
  return check_split_against(read_record(layout, directory), split, counts)


def check_all(layout, observed, directory=None):
  """Checks all splits of a build together: no patient in two splits, and the recorded totals.

  Args:
    layout: the reader's name.
    observed: `{split: {patient_id: examples}}` of the build.
    directory: the record's folder (default `RECORD_DIR`).

  Returns:
    None (no record or no totals), True (the data holds the recorded number of patients and
    examples) or False (other data: its number of patients is not the recorded one).

  Raises:
    LidcError: one line naming the layout, what was expected and what was found.
  """
  first_split = {}
  for split, counts in sorted(observed.items(), key=lambda kv: lidc_common.SPLITS.index(kv[0])):
    for patient in sorted(counts):
      if patient in first_split:
        raise lidc_common.LidcError(f"lidc/{layout}: expected each patient in one split, found "
                                    f"{patient} in {first_split[patient]} and in {split}.")
      first_split[patient] = split
  record = read_record(layout, directory)
  if record is None or record.total_patients is None or record.total_examples is None:
    return None
  if len(first_split) != record.total_patients:
    return False
  examples = sum(sum(counts.values()) for counts in observed.values())
  if examples != record.total_examples:
    raise lidc_common.LidcError(
        f"{record.path()}: expected the recorded lidc/{layout} ({record.total_patients} "
        f"patients, {record.total_examples} examples in all splits), found {examples} examples "
        f"of {len(first_split)} patients.")
  return True


def write_observed(directory, split, counts):
  """Writes a split's `{patient_id: examples}` as `<directory>/patients-<split>.json`."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(directory) / f"{OBSERVED_PREFIX}{split}.json"
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text(json.dumps(dict(sorted(counts.items())), indent=1) + "\n")
  temporary.replace(path)


def read_observed(directory):
  """`{split: {patient_id: examples}}` of the `patients-<split>.json` files in `directory`."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  observed = {}
  for split in lidc_common.SPLITS:
    path = epath.Path(directory) / f"{OBSERVED_PREFIX}{split}.json"
    if path.exists():
      observed[split] = json.loads(path.read_text())
  return observed


def _check_and_write(counts, record, split, observed_dir):
  check_split_against(record, split, counts)
  if observed_dir is not None:
    write_observed(observed_dir, split, counts)


def counted(examples, layout, split, observed_dir=None, directory=None):
  """Passes `(key, example)` pairs through, then checks the split's patients against the record.

  Args:
    examples: iterator of `(key, example)`.
    layout: the reader's name.
    split: the split the examples are written to.
    observed_dir: where to write the split's `patients-<split>.json` (for `check_all`), or None.
    directory: the record's folder (default `RECORD_DIR`).
  """
  record = read_record(layout, directory)
  counts = collections.Counter()
  for key, example in examples:
    counts[example["patient_id"]] += 1
    yield key, example
  _check_and_write(dict(counts), record, split, observed_dir)


def beam_counted(layout, split, observed_dir=None, directory=None):
  """`counted` as a Beam `PTransform` of `(key, example)` (the record is read here, once)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  record = read_record(layout, directory)

  @beam.ptransform_fn
  def transform(examples):
    _ = (examples
         | f"PatientOf_{split}" >> beam.MapTuple(lambda key, example: example["patient_id"])
         | f"CountPatients_{split}" >> beam.combiners.Count.PerElement()
         | f"PatientCounts_{split}" >> beam.combiners.ToDict()
         | f"CheckRecord_{split}" >> beam.Map(_check_and_write, record=record, split=split,
                                              observed_dir=observed_dir))
    return examples

  return transform()  # pylint: disable=no-value-for-parameter


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
  """Checks every split of a prepared lidc dataset against its layout's record (and `check_all`).

  Returns:
    `{split: None | True | False}` as `check_split`.

  Raises:
    LidcError: as `check_split` and `check_all`.
  """
  layout = builder.builder_config.reader
  observed = observed_counts(builder)
  record = read_record(layout, directory)
  result = {split: check_split_against(record, split, counts)
            for split, counts in observed.items()}
  check_all(layout, observed, directory)
  return result
