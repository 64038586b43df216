"""The sample binary's library: image loading, outputs, Keras run == exported model."""

import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_CHANNELS, uint8_images
from tests.helpers import run_binary, write_model_dir
from tf_prob_unet import sample_lib


def test_load_image_png_channels_and_npy_ct_window(tmp_path):
  rgb = np.zeros((8, 6, 3), np.uint8)
  rgb[..., 0] = 255
  Image.fromarray(rgb).save(tmp_path / "red.png")
  assert sample_lib.load_image(str(tmp_path / "red.png"), 3).shape == (8, 6, 3)
  gray = np.arange(48, dtype=np.uint8).reshape(8, 6)
  Image.fromarray(gray).save(tmp_path / "gray.png")
  np.testing.assert_array_equal(sample_lib.load_image(str(tmp_path / "gray.png"), 1)[..., 0], gray)
  # Grayscale stored as RGB, as opaque RGBA, as a palette, or as 16-bit: read as it is.
  Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "gray_rgb.png")
  Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 255)], -1)).save(
      tmp_path / "gray_rgba.png")
  Image.fromarray(gray).convert("P").save(tmp_path / "gray_p.png")
  Image.fromarray(gray.astype(np.uint16)).save(tmp_path / "gray16.png")
  for name in ("gray_rgb", "gray_rgba", "gray_p", "gray16"):
    out = sample_lib.load_image(str(tmp_path / f"{name}.png"), 1, size=(8, 6))
    assert out.shape == (8, 6, 1) and out.dtype == np.uint8, name
    np.testing.assert_array_equal(out[..., 0], gray, err_msg=name)

  hu = np.array([[-2000.0, -1350.0, -600.0], [150.0, 400.0, -1000.0]])
  np.save(tmp_path / "ct.npy", hu)
  out = sample_lib.load_image(str(tmp_path / "ct.npy"), 1)
  np.testing.assert_array_equal(out[..., 0], [[0, 0, 128], [255, 255, 60]])
  np.testing.assert_array_equal(
      sample_lib.load_image(str(tmp_path / "ct.npy"), 1, ct_window=(-1000.0, 0.0))[..., 0],
      [[0, 0, 102], [255, 255, 0]])


def test_load_image_refuses_another_size_or_channel_count_saying_what_the_model_takes(tmp_path):
  rgb = np.zeros((8, 6, 3), np.uint8)
  rgb[..., 0] = 255
  Image.fromarray(rgb).save(tmp_path / "red.png")
  with pytest.raises(ValueError, match=r"^--image: the model takes 8x6x1 images \(height x width "
                                       r"x channels\), found 8x6x3 \(RGB\) in .*red\.png'; "
                                       r"resize or convert the image first\.$"):
    sample_lib.load_image(str(tmp_path / "red.png"), 1, size=(8, 6))
  Image.fromarray(np.zeros((8, 6), np.uint8)).save(tmp_path / "gray.png")
  with pytest.raises(ValueError, match=r"the model takes 8x6x3 images .* found 8x6x1 \(L\)"):
    sample_lib.load_image(str(tmp_path / "gray.png"), 3, size=(8, 6))
  with pytest.raises(ValueError, match=r"the model takes 16x16x1 images .* found 8x6x1 \(L\)"):
    sample_lib.load_image(str(tmp_path / "gray.png"), 1, size=(16, 16))
  with pytest.raises(ValueError, match=r"the model takes 3-channel images, found 8x6x1 \(L\)"):
    sample_lib.load_image(str(tmp_path / "gray.png"), 3)
  see_through = np.zeros((8, 6, 4), np.uint8)
  see_through[..., 3] = 128
  Image.fromarray(see_through).save(tmp_path / "alpha.png")
  with pytest.raises(ValueError, match=r"found 8x6x4 \(RGBA\)"):
    sample_lib.load_image(str(tmp_path / "alpha.png"), 3, size=(8, 6))
  Image.fromarray(np.full((8, 6), 4000, np.uint16)).save(tmp_path / "deep.png")
  with pytest.raises(ValueError, match=r"--image: expected 8-bit values 0 \.\. 255, found 4000 "
                                       r"\.\. 4000 in .*deep\.png"):
    sample_lib.load_image(str(tmp_path / "deep.png"), 1)
  np.save(tmp_path / "ct3.npy", np.zeros((8, 6, 3)))
  with pytest.raises(ValueError, match=r"the model takes 8x6x1 images .* found 8x6x3 "
                                       r"\(\.npy of CT values\)"):
    sample_lib.load_image(str(tmp_path / "ct3.npy"), 1, size=(8, 6))


def test_load_image_and_config_refuse_clearly(tmp_path):
  with pytest.raises(ValueError, match="--image: expected an image file, found nothing at"):
    sample_lib.load_image(str(tmp_path / "none.png"), 1)
  np.save(tmp_path / "cube.npy", np.zeros((2, 4, 4, 1)))
  with pytest.raises(ValueError, match=r"--image: expected a \[H, W\] or \[H, W, C\] array .* "
                     r"found shape \[2, 4, 4, 1\]"):
    sample_lib.load_image(str(tmp_path / "cube.npy"), 1)
  (tmp_path / "bad.png").write_text("not a png")
  with pytest.raises(ValueError, match="--image: expected a PNG .* could not read"):
    sample_lib.load_image(str(tmp_path / "bad.png"), 1)
  cases = [(dict(), "exactly one of them, found neither"),
           (dict(model_dir="a", saved_model="b"), "found both"),
           (dict(model_dir="a"), "--image: expected at least one"),
           (dict(model_dir="a", image=("x",), num_samples=0), "--num_samples"),
           (dict(model_dir="a", image=("x",)), "--output_dir"),
           (dict(model_dir="a", image=("x",), output_dir="o", ct_window=(5, 1)), "--ct_window")]
  for kwargs, message in cases:
    with pytest.raises(ValueError, match=message):
      sample_lib.SampleConfig(**kwargs).validate()


@pytest.mark.slow
def test_sample_run_writes_masks_grid_uncertainty_and_export_agrees(tiny_export, tmp_path):
  raw, _ = uint8_images(batch=2)
  paths = []
  for i in range(2):
    paths.append(str(tmp_path / f"in{i}" / "scan.png"))  # same stem twice: unique folders
    os.makedirs(os.path.dirname(paths[-1]))
    Image.fromarray(raw[i, ..., 0]).save(paths[-1])
  np.save(tmp_path / "ct.npy", np.linspace(-1400, 200, 32 * 32).reshape(32, 32))
  paths.append(str(tmp_path / "ct.npy"))
  common = dict(image=tuple(paths), num_samples=5, seed=3)
  keras_out = sample_lib.run(sample_lib.SampleConfig(
      model_dir=tiny_export["model_dir"], output_dir=str(tmp_path / "keras"), **common),
      log=lambda *_: None)
  served = sample_lib.run(sample_lib.SampleConfig(
      saved_model=tiny_export["saved_model"], output_dir=str(tmp_path / "served"), **common),
      log=lambda *_: None)
  assert sorted(os.listdir(tmp_path / "keras")) == ["000_scan", "001_scan", "ct"]
  for k, s in zip(keras_out, served):
    assert len(k["masks"]) == 5
    masks = np.stack([np.asarray(Image.open(p)) for p in k["masks"]])
    assert masks.shape == (5, 32, 32) and set(np.unique(masks)) <= {0, 255}
    entropy = np.load(k["uncertainty_npy"])
    assert entropy.shape == (32, 32) and entropy.dtype == np.float32
    # Entropy of the per-pixel frequencies of the written masks.
    freq = (masks == 255).mean(axis=0)
    expected = -(np.where(freq > 0, freq * np.log(np.maximum(freq, 1e-12)), 0)
                 + np.where(freq < 1, (1 - freq) * np.log(np.maximum(1 - freq, 1e-12)), 0))
    np.testing.assert_allclose(entropy, expected, atol=1e-5)
    png = np.asarray(Image.open(k["uncertainty_png"]))
    np.testing.assert_array_equal(png, np.round(entropy / np.log(2) * 255).astype(np.uint8))
    assert Image.open(k["grid"]).size[0] > 0
    # The export draws the same samples from the same seed.
    for a, b in zip(k["masks"], s["masks"]):
      assert np.mean(np.asarray(Image.open(a)) == np.asarray(Image.open(b))) > 0.999
    assert np.mean(np.abs(np.load(s["uncertainty_npy"]) - entropy) > 1e-5) < 0.002


def test_sample_run_works_for_a_deterministic_baseline(tmp_path):
  model_dir, model = write_model_dir(tmp_path / "unet", "unet", num_classes=2,
                                     channels=TINY_CHANNELS, convs_per_block=1)
  raw, x = uint8_images(batch=1)
  Image.fromarray(raw[0, ..., 0]).save(tmp_path / "a.png")
  out = sample_lib.run(sample_lib.SampleConfig(
      model_dir=model_dir, image=(str(tmp_path / "a.png"),), num_samples=3,
      output_dir=str(tmp_path / "out")), log=lambda *_: None)
  expected = (np.argmax(model(x).numpy()[0], -1) * 255).astype(np.uint8)
  for path in out[0]["masks"]:
    np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)
  np.testing.assert_array_equal(np.load(out[0]["uncertainty_npy"]), 0.0)  # all samples agree


def test_sample_run_rejects_an_image_of_another_size_in_one_line(tmp_path):
  model_dir, _ = write_model_dir(tmp_path / "unet", "unet", num_classes=2,
                                 channels=TINY_CHANNELS, convs_per_block=1)
  Image.fromarray(np.zeros((40, 32), np.uint8)).save(tmp_path / "big.png")
  with pytest.raises(ValueError, match=r"--image: the model takes 32x32x1 images \(height x width "
                                       r"x channels\), found 40x32x1 \(L\) in .*big\.png"):
    sample_lib.run(sample_lib.SampleConfig(
        model_dir=model_dir, image=(str(tmp_path / "big.png"),), num_samples=1,
        output_dir=str(tmp_path / "out")), log=lambda *_: None)
  assert not (tmp_path / "out").exists()


def test_sample_binary_stops_with_one_line_for_another_channel_count(tmp_path):
  model_dir, _ = write_model_dir(tmp_path / "unet", "unet", num_classes=2,
                                 channels=TINY_CHANNELS, convs_per_block=1)
  colour = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
  Image.fromarray(colour).save(tmp_path / "colour.png")
  proc = run_binary("tf_prob_unet.sample", f"--model_dir={model_dir}",
                    f"--image={tmp_path / 'colour.png'}", f"--output_dir={tmp_path / 'out'}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: --image: the model takes 32x32x1 images (height x width x channels), found "
      f"32x32x3 (RGB) in '{tmp_path / 'colour.png'}'; resize or convert the image first.")
  assert not (tmp_path / "out").exists()
