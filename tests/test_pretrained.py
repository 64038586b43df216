"""Shipped models: packing a run, loading by path and by `pretrained:NAME`, checksums, sampling;
and every model shipped in the package."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import run_binary
from tf_prob_unet import evaluate_lib, pretrained, run_dir, sample_lib, train_lib
from tf_prob_unet.pretrained import __main__ as pretrained_main
from tf_prob_unet.pretrained import pack

TINY = "synthetic_ambiguous/lidc_like_tiny"
NAME = "tiny_synthetic"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
  """A tiny run trained 2 steps, its validation metrics, and its packed folder."""
  root = tmp_path_factory.mktemp("pretrained")
  config = train_lib.TrainConfig(
      dataset=TINY, data_dir=str(root / "data"), model_dir=str(root / "run"), train_steps=2,
      batch_size=4, channels=(4, 8), convs_per_block=1, lr_values=(1e-3,), lr_boundaries=(),
      checkpoint_every=2, summary_every=2, log_every=2, eval_every=100, eval_batches=1)
  train_lib.run(config, log=lambda *_: None)
  evaluate_lib.run(evaluate_lib.EvalConfig(
      model_dir=(config.model_dir,), output_dir=str(root / "eval"), num_samples=(1, 2),
      split="validation", limit=4, batch_size=4), log=lambda *_: None)
  notes = root / "notes.md"
  notes.write_text("Packed for the tests.\n")
  folder = pack.pack(config.model_dir, NAME, str(root / "shipped"),
                     metrics=(str(root / "eval" / "metrics.json"),), card_notes=str(notes),
                     log=lambda *_: None)
  return {"run": config.model_dir, "folder": folder, "root": root, "config": config}


def _png(path, shape, seed=0):
  """A generated uint8 image of `shape` `[H, W, C]` (C 1 or 3) saved as PNG."""
  pixels = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
  Image.fromarray(pixels[..., 0] if shape[-1] == 1 else pixels).save(path)
  return str(path)


def _sample_twice(model_dir, input_shape, out):
  """Samples one generated image twice with the same seed through the sample binary's library;
  returns the masks of both runs `[2, M, H, W]` and the first run's uncertainty."""
  image = _png(out / "scan.png", input_shape)
  runs = [sample_lib.run(sample_lib.SampleConfig(
      model_dir=model_dir, image=(image,), num_samples=3, seed=5,
      output_dir=str(out / f"samples{i}")), log=lambda *_: None)[0] for i in range(2)]
  masks = np.stack([[np.asarray(Image.open(p)) for p in r["masks"]] for r in runs])
  return masks, np.load(runs[0]["uncertainty_npy"])


def test_pack_writes_a_small_weights_only_folder_and_its_card(packed):
  folder, step = packed["folder"], 2
  files = sorted(os.path.relpath(os.path.join(d, f), folder)
                 for d, _, fs in os.walk(folder) for f in fs)
  assert files == ["MODEL_CARD.md", "checkpoints/checkpoint",
                   f"checkpoints/ckpt-{step}.data-00000-of-00001", f"checkpoints/ckpt-{step}.index",
                   "flags.cfg", "model_config.json"]
  assert sum(os.path.getsize(os.path.join(folder, f)) for f in files) < 200_000
  # Weights and step only: no optimizer slots, no input position.
  names = [n for n, _ in tf.train.list_variables(os.path.join(folder, "checkpoints",
                                                              f"ckpt-{step}"))]
  assert all(n.startswith(("weights/", "step/", "_CHECKPOINTABLE_OBJECT_GRAPH")) for n in names)
  run_names = [n for n, _ in tf.train.list_variables(
      tf.train.latest_checkpoint(os.path.join(packed["run"], "checkpoints")))]
  assert any("optimizer" in n for n in run_names)
  assert sorted(n for n in names if n.startswith("weights/")) == sorted(
      n for n in run_names if n.startswith("weights/"))
  # No path of the training machine.
  flags_text = open(os.path.join(folder, "flags.cfg")).read()
  assert "--data_dir" not in flags_text and f"--model_dir=runs/{NAME}\n" in flags_text
  assert str(packed["root"]) not in flags_text
  config = json.load(open(os.path.join(folder, "model_config.json")))
  assert config["data_dir"] == "" and config["dataset"] == TINY
  card = pretrained.card(folder)
  assert card.startswith(f"# {NAME}\n")
  assert pretrained.summary(folder).startswith("Probabilistic U-Net (`prob_unet`, channels 4-8")
  assert f"python -m tf_prob_unet.pretrained {NAME})/flags.cfg" in card
  assert f"Checkpoint: step {step}" in card and "Not for clinical use" in card
  assert f"### {TINY}, validation split" in card and "| 2 | " in card
  assert "Packed for the tests." in card
  commit = card.split("Package commit: ", 1)[1].split("\n", 1)[0]
  assert commit == "unknown" or len(commit.split()[0]) == 40


def test_card_checksums_name_the_checkpoint_files(packed):
  folder = packed["folder"]
  listed = pretrained.checksums(pretrained.card(folder))
  assert sorted(listed) == sorted(f"checkpoints/{f}"
                                  for f in os.listdir(os.path.join(folder, "checkpoints")))
  for rel, digest in listed.items():
    assert hashlib.sha256(open(os.path.join(folder, rel), "rb").read()).hexdigest() == digest
  assert pretrained.verify(folder) == listed


def test_a_corrupted_checkpoint_byte_fails_the_checksum(packed, tmp_path):
  folder = shutil.copytree(packed["folder"], tmp_path / NAME)
  (data,) = (folder / "checkpoints").glob("*.data-*")
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0x01
  data.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match=r"expected checkpoints/ckpt-2\.data-00000-of-00001 with "
                                       r"sha256 [0-9a-f]{64} .* found sha256 [0-9a-f]{64}"):
    pretrained.verify(str(folder))
  extra = shutil.copytree(packed["folder"], tmp_path / "extra")
  (extra / "checkpoints" / "ckpt-1.index").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"found checkpoints/ckpt-1\.index as well"):
    pretrained.verify(str(extra))


def test_packed_model_loads_by_path_and_samples_deterministically(packed, tmp_path):
  model, info = run_dir.load_model(packed["folder"])
  trained, _ = run_dir.load_model(packed["run"])
  assert info["step"] == 2 and info["input_shape"] == [32, 32, 1]
  for name, variable in run_dir.model_weights(trained).items():
    np.testing.assert_array_equal(run_dir.model_weights(model)[name].numpy(), variable.numpy())
  masks, entropy = _sample_twice(packed["folder"], info["input_shape"], tmp_path)
  assert masks.shape == (2, 3, 32, 32) and set(np.unique(masks)) <= {0, 255}
  assert entropy.shape == (32, 32)
  np.testing.assert_array_equal(masks[0], masks[1])  # same seed, same samples
  x = np.random.default_rng(0).random((1, 32, 32, 1)).astype(np.float32)
  a = model.sample(x, 4, seed=tf.constant([1, 2], tf.int64)).numpy()
  b = trained.sample(x, 4, seed=tf.constant([1, 2], tf.int64)).numpy()
  assert a.shape == (1, 4, 32, 32)
  np.testing.assert_array_equal(a, b)  # the packed weights are the run's


def test_api_and_pretrained_name_resolve_in_every_reader(packed, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(pretrained, "directory", lambda: os.path.dirname(packed["folder"]))
  assert pretrained.names() == [NAME]
  assert pretrained.path(NAME) == packed["folder"]
  assert pretrained.card(NAME) == pretrained.card(packed["folder"])
  assert run_dir.resolve_model_dir(f"pretrained:{NAME}") == packed["folder"]
  assert run_dir.resolve_model_dir("runs/x") == "runs/x"
  _, info = run_dir.load_model(f"pretrained:{NAME}")
  assert info["checkpoint"] == os.path.join(packed["folder"], "checkpoints", "ckpt-2")
  masks, _ = _sample_twice(f"pretrained:{NAME}", info["input_shape"], tmp_path)
  np.testing.assert_array_equal(masks[0], masks[1])
  results = evaluate_lib.run(evaluate_lib.EvalConfig(
      model_dir=(f"pretrained:{NAME}",), output_dir=str(tmp_path / "eval"), num_samples=(2,),
      split="validation", limit=4, batch_size=4, data_dir=packed["config"].data_dir),
      log=lambda *_: None)
  assert list(results) == [NAME] and results[NAME]["step"] == 2
  assert sorted(os.listdir(packed["folder"])) == ["MODEL_CARD.md", "checkpoints", "flags.cfg",
                                                  "model_config.json"]  # nothing written there
  # The command line: the listing, a path, verify.
  capsys.readouterr()
  assert pretrained_main.main(["x"]) == 0
  assert capsys.readouterr().out == (f"{NAME}\t{packed['folder']}\t"
                                     f"{pretrained.summary(NAME)}\n")
  assert pretrained_main.main(["x", NAME]) == 0
  assert capsys.readouterr().out == packed["folder"] + "\n"
  assert pretrained_main.main(["x", "verify", NAME]) == 0
  assert "3 checkpoint files match" in capsys.readouterr().out
  assert pretrained_main.main(["x", "nope"]) == 2
  assert capsys.readouterr().err == (f"error: pretrained model: expected one of {NAME}; found "
                                     f"'nope'.\n")


def test_unknown_names_and_writes_into_shipped_models_are_refused(packed, monkeypatch):
  monkeypatch.setattr(pretrained, "directory", lambda: os.path.dirname(packed["folder"]))
  with pytest.raises(ValueError, match=rf"^--model_dir: pretrained model: expected one of "
                                       rf"{NAME}; found 'nope'\.$"):
    run_dir.load_model("pretrained:nope")
  with pytest.raises(ValueError, match=r"^--model_dir: expected a directory to write to, found "
                                       r"the shipped model 'pretrained:x'"):
    train_lib.TrainConfig(model_dir="pretrained:x").validate()
  with pytest.raises(ValueError, match=r"^--model_dir: expected a directory to write to outside "
                                       r"the package's shipped models"):
    train_lib.TrainConfig(model_dir=packed["folder"]).validate()
  with pytest.raises(ValueError, match=r"^--output_dir: expected a directory to write to outside"):
    evaluate_lib.EvalConfig(model_dir=("a",), output_dir=os.path.join(
        packed["folder"], "eval")).validate()
  with pytest.raises(ValueError, match=r"^--output_dir: expected a directory to write to outside"):
    sample_lib.SampleConfig(model_dir="a", image=("x",), output_dir=packed["folder"]).validate()


def test_pack_refuses_bad_input_in_one_line(packed, tmp_path):
  cases = [(dict(name="a/b"), r"--name: expected letters"),
           (dict(name="pack"), r"--name: expected letters"),
           (dict(output_dir=os.path.dirname(packed["folder"])), r"exists and is not empty"),
           (dict(model_dir=str(tmp_path)), r"--model_dir: expected a training run with flags.cfg"),
           (dict(metrics=(str(tmp_path / "none.json"),)), r"--metrics: expected a metrics.json")]
  for kwargs, message in cases:
    args = {**dict(model_dir=packed["run"], name=NAME, output_dir=str(tmp_path / "out")),
            **kwargs}
    with pytest.raises(ValueError, match=message):
      pack.pack(**args, log=lambda *_: None)
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"ged": {}, "hm_iou": {}, "step": 7}))
  with pytest.raises(ValueError, match=r"--metrics: expected metrics of the packed checkpoint "
                                       r"\(step 2\), found step 7"):
    pack.pack(packed["run"], NAME, str(tmp_path / "out"), metrics=(str(other),),
              log=lambda *_: None)
  assert not (tmp_path / "out" / NAME).exists()


def test_lidc_card_attributes_the_data_and_its_licence():
  info = {"model": "prob_unet", "input_shape": [64, 64, 1], "dataset": "lidc/slices_64",
          "kwargs": {"num_classes": 2, "channels": [8, 16, 32, 64], "latent_dim": 6},
          "step": 15000}
  card = pack.model_card("lidc_prob_unet", info, "--model=prob_unet\n", "unknown",
                         {"checkpoints/ckpt-15000.index": "0" * 64})
  for text in ("LIDC-IDRI", "The Cancer Imaging Archive", "CC BY 3.0", "Armato",
               "*Medical Physics* 38(2):915-931, 2011", "Clark, K.",
               "10.7937/K9/TCIA.2015.LO9QL9SX",
               "Not for clinical use", "Package commit: unknown", "64x64x1",
               "sha256 " + "0" * 64 + " checkpoints/ckpt-15000.index"):
    assert text in card, text
  assert card.splitlines()[2] == ("Probabilistic U-Net (`prob_unet`, channels 8-16-32-64, latent "
                                  "size 6) trained on `lidc/slices_64` (64x64x1 images, 2 classes) "
                                  "for 15000 steps.")


@pytest.mark.slow
def test_pack_binary_and_the_listing_binary(packed, tmp_path):
  ok = run_binary("tf_prob_unet.pretrained", "pack", f"--model_dir={packed['run']}",
                  f"--name={NAME}", f"--output_dir={tmp_path}")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert f"as {tmp_path / NAME}" in ok.stdout
  pretrained.verify(str(tmp_path / NAME))
  bad = run_binary("tf_prob_unet.pretrained", "pack", f"--model_dir={packed['run']}",
                   "--name=a/b", f"--output_dir={tmp_path}")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
      "error: --name: expected letters")
  listing = run_binary("tf_prob_unet.pretrained")
  assert listing.returncode == 0
  assert listing.stdout.splitlines() == [
      f"{n}\t{pretrained.path(n)}\t{pretrained.summary(n)}" for n in pretrained.names()]


# --- The models shipped in the package -----------------------------------------------------------

def test_the_package_ships_pretrained_models():
  assert pretrained.names(), f"no pretrained models in {pretrained.directory()}"


@pytest.mark.parametrize("name", pretrained.names())
def test_shipped_model_loads_samples_deterministically_and_matches_its_card(name, tmp_path):
  checked = pretrained.verify(name)
  assert any(rel.endswith(".index") for rel in checked)
  assert pretrained.summary(name) and "## Intended use and limits" in pretrained.card(name)
  model, info = run_dir.load_model(f"pretrained:{name}")
  height, width, channels = info["input_shape"]
  x = np.random.default_rng(0).integers(0, 256, (1, height, width, channels)) / 255.0
  seed = tf.constant([3, 4], tf.int64)
  first = model.sample(x.astype(np.float32), 4, seed=seed).numpy()
  assert first.shape == (1, 4, height, width)
  assert first.min() >= 0 and first.max() < model.num_classes
  np.testing.assert_array_equal(first, model.sample(x.astype(np.float32), 4, seed=seed).numpy())
  if channels in (1, 3):
    masks, entropy = _sample_twice(f"pretrained:{name}", info["input_shape"], tmp_path)
    assert masks.shape == (2, 3, height, width) and entropy.shape == (height, width)
    np.testing.assert_array_equal(masks[0], masks[1])
