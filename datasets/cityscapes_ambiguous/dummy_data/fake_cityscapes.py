"""Writes fake Cityscapes downloads in the official layout and file names (for tests).

Cityscapes cannot be downloaded without registration, so the tests generate stand-ins: a few
street-scene-like frames per split with plausible labelIds (every labelId 0..33 appears in a strip
of blocks, the five flip classes cover large areas, void borders and an ego vehicle), written as

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_{labelIds,color,instanceIds}.png, _polygons.json
    README, license.txt

either as extracted folders or as `leftImg8bit_trainvaltest.zip` / `gtFine_trainvaltest.zip`,
plus optional cues (`cues/<split>/<city>/bb_preds/<id>_prior_preds_trainIds.npy` as CAR publishes
them, labelIds at 256x512; or `cues/<split>/<city>/<id>_cue_labelIds.png` at full size).

    python datasets/cityscapes_ambiguous/dummy_data/fake_cityscapes.py OUT_DIR [--zip] [--cues=car]
"""

import argparse
import io
import json
import os
import zipfile

import numpy as np
from PIL import Image

FULL_SIZE = (1024, 2048)
CUE_SIZE = (256, 512)
# (official split, city, sequence, frame). Train cities, the three held-out train cities, the
# official val cities and one official test frame (which the builder must ignore).
FRAMES = (
    ("train", "aachen", 0, 19), ("train", "aachen", 1, 19), ("train", "bochum", 0, 313),
    ("train", "darmstadt", 0, 19), ("train", "monchengladbach", 0, 26), ("train", "ulm", 0, 19),
    ("val", "frankfurt", 0, 294), ("val", "lindau", 0, 0), ("val", "munster", 0, 19),
    ("test", "berlin", 0, 19),
)
_PALETTE = np.random.default_rng(1234).integers(30, 226, (256, 3)).astype(np.float32)


def build(builder_cls, config, manual_dir, data_dir):
  """Builds `config` of `builder_cls` from fake downloads in `manual_dir` (no statistics)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (the CLI needs no TF)
  builder = builder_cls(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def frame_id(city, seq, frame):
  return f"{city}_{seq:06d}_{frame:06d}"


def fake_label_ids(rng, size):
  """A street scene of Cityscapes labelIds, uint8 `[H, W]`.

  Sky, buildings, a road trapezoid with sidewalks and terrain beside it, trees (vegetation), cars
  on the road, people on the sidewalks, a pole and a sign, a band with every labelId 0..33, an
  out-of-roi border and an ego vehicle at the bottom.
  """
  h, w = size
  v = (np.arange(h)[:, None] + 0.5) / h
  u = (np.arange(w)[None, :] + 0.5) / w
  horizon = rng.uniform(0.42, 0.5)
  label = np.where(v < horizon - rng.uniform(0.1, 0.2), 23, 11).astype(np.uint8)  # sky, building
  label = np.broadcast_to(label, size).copy()
  depth = np.clip((v - horizon) / (1 - horizon), 0, 1)
  offset = u - rng.uniform(0.45, 0.55)
  road_half = 0.03 + 0.3 * depth
  ground = v >= horizon
  label[ground & (np.abs(offset) < road_half + 0.05 + 0.15 * depth)] = 8  # sidewalk
  label[ground & (np.abs(offset) >= road_half + 0.05 + 0.15 * depth)] = 22  # terrain
  label[ground & (np.abs(offset) < road_half)] = 7  # road
  for _ in range(2):  # trees
    cu, cv = rng.uniform(0.05, 0.3) + rng.integers(0, 2) * 0.65, horizon - rng.uniform(0.05, 0.15)
    label[((u - cu) / 0.08) ** 2 + ((v - cv) / 0.12) ** 2 < 1] = 21
  for _ in range(rng.integers(1, 3)):  # cars
    cu, cv = rng.uniform(0.4, 0.55), rng.uniform(horizon + 0.15, 0.8)
    label[(np.abs(u - cu) < 0.06) & (np.abs(v - cv) < 0.05)] = 26
  for side in (-1, 1):  # a person on each sidewalk
    cu = 0.5 + side * rng.uniform(0.3, 0.38)
    label[(np.abs(u - cu) < 0.012) & (v > horizon + 0.05) & (v < horizon + 0.25)] = 24
  label[(np.abs(u - 0.9) < 0.004) & (v > 0.2) & (v < horizon + 0.1)] = 17  # pole
  label[(np.abs(u - 0.9) < 0.015) & (np.abs(v - 0.22) < 0.02)] = 20  # traffic sign
  band = (v > 0.05) & (v < 0.1)  # every labelId once, in 34 blocks
  label[np.broadcast_to(band, size)] = np.broadcast_to(
      np.minimum((u * 34).astype(np.uint8), 33), size)[np.broadcast_to(band, size)]
  label[:, : max(1, w // 100)] = 3  # out of roi
  label[np.broadcast_to(v > 0.95 - 0.03 * np.cos(np.pi * (u - 0.5)), size)] = 1  # ego vehicle
  return label


def fake_image(label_ids):
  """An RGB image, uint8 `[H, W, 3]`: a colour per labelId, shaded by row (no pixel noise)."""
  rows = np.arange(label_ids.shape[0])
  shade = (0.8 + 0.2 * np.sin(rows / 23.0))[:, None, None]
  return (_PALETTE[label_ids] * shade).astype(np.uint8)


def fake_cue(rng, label_ids, size):
  """A black-box-like prediction: the labelIds at `size` (nearest), shifted, with a wrong block.

  Returns int64 `[H, W]` labelIds with a few -1 (license plate) pixels, as CAR's files have.
  """
  h, w = label_ids.shape
  rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(int)
  cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(int)
  cue = np.roll(label_ids[rows[:, None], cols[None, :]].astype(np.int64), 2, axis=1)
  y, x = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
  cue[y:y + size[0] // 8, x:x + size[1] // 8] = 26
  cue[-2:, :3] = -1
  return cue


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, "PNG", compress_level=1)
  return buffer.getvalue()


def write_cityscapes(root, frames=FRAMES, size=FULL_SIZE, zips=False, seed=0):
  """Writes the fake downloads into `root`.

  Args:
    root: the manual directory.
    frames: `(official split, city, seq, frame)` tuples.
    size: (H, W) of the frames (the official 1024x2048 by default).
    zips: write `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip` instead of folders.
    seed: seed of the scenes.

  Returns:
    dict frame id -> dict with `split` (official), `city`, `label_ids` uint8 `[H, W]` and `image`
    uint8 `[H, W, 3]`.
  """
  os.makedirs(root, exist_ok=True)
  members = {"leftImg8bit": {}, "gtFine": {}}
  written = {}
  for index, (split, city, seq, frame) in enumerate(frames):
    rng = np.random.default_rng([seed, index])
    fid = frame_id(city, seq, frame)
    label_ids = fake_label_ids(rng, size)
    image = fake_image(label_ids)
    stem = f"gtFine/{split}/{city}/{fid}_gtFine"
    members["leftImg8bit"][f"leftImg8bit/{split}/{city}/{fid}_leftImg8bit.png"] = _png(image)
    members["gtFine"][f"{stem}_labelIds.png"] = _png(label_ids)
    members["gtFine"][f"{stem}_color.png"] = _png(_PALETTE[label_ids].astype(np.uint8))
    members["gtFine"][f"{stem}_instanceIds.png"] = _png(label_ids.astype(np.uint16) * 1000)
    members["gtFine"][f"{stem}_polygons.json"] = json.dumps(
        {"imgHeight": size[0], "imgWidth": size[1], "objects": []}).encode()
    written[fid] = {"split": split, "city": city, "label_ids": label_ids, "image": image}
  for archive, files in members.items():
    if zips:
      _write_zip(os.path.join(root, f"{archive}_trainvaltest.zip"), files)
    else:
      for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
          f.write(data)
  return written


def _write_zip(path, files):
  """A zip of `files` (name -> bytes) plus the README and license.txt the official zips have."""
  files = dict(files, README=b"fake Cityscapes for tests\n", **{"license.txt": b"none\n"})
  with zipfile.ZipFile(path, "w") as z:
    for name, data in files.items():
      z.writestr(name, data)


def zip_folders(src_root, dst_root):
  """Packs the `leftImg8bit/` and `gtFine/` folders of `src_root` into the official zips."""
  os.makedirs(dst_root, exist_ok=True)
  for archive in ("leftImg8bit", "gtFine"):
    files = {}
    for directory, _, names in os.walk(os.path.join(src_root, archive)):
      for name in names:
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
          files[os.path.relpath(path, src_root).replace(os.sep, "/")] = f.read()
    _write_zip(os.path.join(dst_root, f"{archive}_trainvaltest.zip"), files)


def write_cues(root, written, kind="car", seed=0):
  """Writes a cue for every frame of `written` (from `write_cityscapes`) under `root/cues/`.

  Args:
    root: the manual directory.
    written: what `write_cityscapes` returned.
    kind: "car" (CAR's `<split>/<city>/bb_preds/<id>_prior_preds_trainIds.npy`, int64 labelIds
      at 256x512, a few -1) or "png" (`<split>/<city>/<id>_cue_labelIds.png` at the frame size).
    seed: seed of the cue errors.

  Returns:
    dict frame id -> the labelIds written.
  """
  cues = {}
  for index, (fid, frame) in enumerate(sorted(written.items())):
    rng = np.random.default_rng([seed, index, 1])
    folder = os.path.join(root, "cues", frame["split"], frame["city"])
    if kind == "car":
      cue = fake_cue(rng, frame["label_ids"], CUE_SIZE)
      os.makedirs(os.path.join(folder, "bb_preds"), exist_ok=True)
      np.save(os.path.join(folder, "bb_preds", f"{fid}_prior_preds_trainIds.npy"), cue)
    else:
      cue = np.maximum(fake_cue(rng, frame["label_ids"], frame["label_ids"].shape), 0)
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, f"{fid}_cue_labelIds.png"), "wb") as f:
        f.write(_png(cue.astype(np.uint8)))
    cues[fid] = cue
  return cues


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out_dir")
  parser.add_argument("--zip", action="store_true", help="write the two zips instead of folders")
  parser.add_argument("--cues", choices=("car", "png"), default=None)
  args = parser.parse_args()
  written = write_cityscapes(args.out_dir, zips=args.zip)
  if args.cues:
    write_cues(args.out_dir, written, args.cues)
  print(f"wrote {len(written)} fake frames to {args.out_dir}")


if __name__ == "__main__":
  main()
