"""Hierarchical Probabilistic U-Net tests on real (tiny) computation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import tiny_batch
from tests.helpers import (assert_allclose, assert_config_round_trip, loss_gradients,
                           assert_keras_file_round_trip)
from tf_prob_unet.layers import HierarchicalCore, ResBlock, StitchingDecoder
from tf_prob_unet.layers.res_block import downsample, upsample
from tf_prob_unet.models import HierarchicalProbUNet, get_model_class

# 5 levels at 32x32: encoder 32, 16, 8, 4, 2; latent scales at 2x2, 4x4, 8x8 with 1, 2, 1
# channels; the truncated decoder ends at 16x16, the stitching decoder runs the 32x32 level.
TINY = dict(channels=(4, 8, 8, 8, 8), blocks_per_level=1, convs_per_block=2,
            latent_dims=(1, 2, 1))
SCALES = [(2, 2, 1), (4, 4, 2), (8, 8, 1)]


def make_model(num_classes=2, in_channels=1, size=32, **kw):
  model = HierarchicalProbUNet(num_classes=num_classes, **{**TINY, **kw})
  model.build((None, size, size, in_channels))
  return model


def _closed_form_kl(mq, lq, mp, lp):
  sq, sp = np.exp(lq), np.exp(lp)
  return np.sum(lp - lq + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5, axis=-1)


# --- blocks --------------------------------------------------------------------------------------

def test_blocks_config_round_trip():
  block = ResBlock(8, bottleneck_filters=3, num_convs=2, weight_decay=1e-4, name="b")
  block.build((None, 8, 8, 5))
  assert_config_round_trip(block)
  core = HierarchicalCore(**TINY, weight_decay=1e-4, log_sigma_bound=3.0,
                          stop_at_last_latent=True)
  core.build((None, 32, 32, 3))
  assert_config_round_trip(core)
  stitch = StitchingDecoder(3, TINY["channels"], 3, 1, 2, 1e-4)
  stitch.build((None, None, None, 8))
  assert_config_round_trip(stitch)


def test_res_block_is_pre_activation_with_projections():
  x = tf.random.stateless_normal((2, 6, 6, 5), seed=[1, 2])
  block = ResBlock(8, num_convs=3)
  out = block(x)
  assert tuple(out.shape) == (2, 6, 6, 8)
  assert [int(c.kernel.shape[-1]) for c in block.convs] == [4, 4, 4]  # d = n / 2, an int
  # relu -> conv, relu, conv, relu, conv -> 1x1 to n; skip: 1x1 of the raw input.
  r = tf.nn.relu(x)
  for i, conv in enumerate(block.convs):
    r = tf.nn.conv2d(tf.nn.relu(r) if i else r, conv.kernel, 1, "SAME") + conv.bias
  r = tf.nn.conv2d(r, block.output_projection.kernel, 1, "SAME") + block.output_projection.bias
  skip = tf.nn.conv2d(x, block.skip_projection.kernel, 1, "SAME") + block.skip_projection.bias
  assert_allclose(out, r + skip, rtol=1e-5, atol=1e-5)
  # Same channels in and out: the skip is the identity; d == n: no output projection.
  same = ResBlock(5, bottleneck_filters=5, num_convs=1)
  out = same(x)
  assert same.skip_projection is None and same.output_projection is None
  conv = same.convs[0]
  assert_allclose(out, x + tf.nn.conv2d(tf.nn.relu(x), conv.kernel, 1, "SAME") + conv.bias,
                  rtol=1e-5, atol=1e-5)


def test_kernels_orthogonal_and_decay_covers_kernels_and_biases():
  block = ResBlock(8, num_convs=1, weight_decay=0.1)
  block.build((None, 4, 4, 16))
  w = block.skip_projection.kernel.numpy().reshape(16, 8)
  assert_allclose(w.T @ w, np.eye(8), atol=1e-5)
  block(tf.zeros((1, 4, 4, 16)))
  expected = sum(0.05 * np.sum(v.numpy() ** 2) for v in block.trainable_variables)
  assert float(tf.add_n(block.losses)) == pytest.approx(expected, rel=1e-5)
  assert len(block.losses) == len(block.trainable_variables)  # kernels and biases


def test_resampling_is_pixel_repetition_and_2x2_mean():
  x = tf.reshape(tf.range(2 * 3 * 4 * 2, dtype=tf.float32), (2, 3, 4, 2))
  up = upsample(x).numpy()
  assert_allclose(up, np.repeat(np.repeat(x.numpy(), 2, 1), 2, 2))
  assert_allclose(downsample(tf.constant(up)), x)


# --- shapes ------------------------------------------------------------------------------------

def test_shapes_at_every_scale():
  model = make_model(num_classes=3, in_channels=2)
  images, labels = tiny_batch(3, 32, 2, 3)
  prior = model.prior(images)
  assert [tuple(f.shape) for f in prior["encoder_features"]] == [
      (3, 32, 32, 4), (3, 16, 16, 8), (3, 8, 8, 8), (3, 4, 4, 8), (3, 2, 2, 8)]
  for key in ("mu", "log_sigma", "z"):
    assert [tuple(t.shape) for t in prior[key]] == [(3,) + s for s in SCALES], key
  assert tuple(prior["features"].shape) == (3, 16, 16, 8)
  posterior = model.posterior(images, labels)
  assert [tuple(t.shape) for t in posterior["mu"]] == [(3,) + s for s in SCALES]
  # The posterior stops at its last distribution: no decoder output, no blocks after it.
  assert posterior["features"] is None and len(model.posterior_net.decoder_blocks) == 2
  assert model.noise_dim(32, 32) == 4 + 32 + 64
  assert tuple(model(images).shape) == (3, 32, 32, 3)
  assert tuple(model.reconstruct(images, labels, seed=1).shape) == (3, 32, 32, 3)
  labels_, logits, probs = model.sample(images, 5, seed=0, return_logits=True,
                                        return_probs=True)
  assert tuple(labels_.shape) == (3, 5, 32, 32) and labels_.dtype == tf.int32
  assert tuple(logits.shape) == (3, 5, 32, 32, 3)
  assert_allclose(tf.reduce_sum(probs, -1), np.ones((3, 5, 32, 32)), atol=1e-5)
  np.testing.assert_array_equal(model.sample(images, 5, seed=0).numpy(), labels_.numpy())


def test_lidc_defaults_match_the_release():
  model = HierarchicalProbUNet()
  model.build((None, 128, 128, 1))
  count = lambda layer: sum(int(np.prod(v.shape)) for v in layer.trainable_variables)  # noqa
  # REFERENCE_HPU 1.1: prior 10.69 M, posterior 10.69 M less 1.29 M unused, f_comb 0.49 M.
  assert count(model.prior_net) == pytest.approx(10.69e6, rel=2e-3)
  assert count(model.posterior_net) == pytest.approx(10.69e6 - 1.29e6, rel=2e-3)
  assert count(model.stitching_decoder) == pytest.approx(0.49e6, rel=1e-2)
  assert [s[:2] for s in model.latent_shapes(128, 128)] == [(1, 1), (2, 2), (4, 4), (8, 8)]
  assert model.noise_dim(128, 128) == 85


def test_bottleneck_channels_follow_the_given_channels():
  # The release takes the res-blocks' inner channels from its default list whatever is passed.
  model = make_model(channels=(6, 10, 12, 14, 16))
  inner = [int(b.convs[0].kernel.shape[-1]) for blocks in model.prior_net.encoder_blocks
           for b in blocks]
  assert inner == [3, 5, 6, 7, 8]


# --- KL, teacher forcing, sampling ---------------------------------------------------------------

def test_kl_per_scale_equals_closed_form_summed_over_pixels():
  model = make_model()
  images, labels = tiny_batch(4)
  seed = tf.constant([3, 4])
  terms = model.loss_terms(images, labels, seed, training=False)
  shape = images.shape
  noise = model.split_noise(model._noise(tf.constant(images), seed), shape[1], shape[2])
  q = model.posterior(images, labels, noise=noise)
  p = model.prior(images, latents=q["z"])
  total = 0.0
  for i in range(3):
    closed = _closed_form_kl(q["mu"][i].numpy(), q["log_sigma"][i].numpy(), p["mu"][i].numpy(),
                             p["log_sigma"][i].numpy()).sum(axis=(1, 2))
    assert closed.shape == (4,)
    assert float(terms[f"kl_{i}"]) == pytest.approx(float(closed.mean()), rel=1e-4, abs=1e-6)
    total += closed.mean()
  assert float(terms["kl"]) == pytest.approx(total, rel=1e-4)
  assert float(terms["loss"]) == pytest.approx(
      float(terms["rec_loss"]) + float(terms["kl"]) + float(terms["weight_decay_loss"]), rel=1e-5)


def test_teacher_forcing_prior_scale_i_depends_on_z_below_i_only():
  model = make_model()
  images, _ = tiny_batch(2)
  features = model.prior_net.encode(tf.constant(images))
  base = [tf.random.stateless_normal((2,) + s, seed=[i, 0]) for i, s in enumerate(SCALES)]
  reference = model.prior_net.decode(features, latents=base)
  for j in range(3):
    changed = list(base)
    changed[j] = base[j] + 1.0
    out = model.prior_net.decode(features, latents=changed)
    for i in range(3):
      delta = max(np.abs(out[k][i].numpy() - reference[k][i].numpy()).max()
                  for k in ("mu", "log_sigma"))
      if i > j:
        assert delta > 1e-6, (i, j)
      else:
        assert delta == 0.0, (i, j)
  # In training the latents are the posterior's: changing the label changes the prior at the
  # finer scales through z_<i, never at scale 0.
  _, labels = tiny_batch(2)
  seed = tf.constant([0, 1])
  a = model.loss_terms(images, labels, seed, training=False)
  b = model.loss_terms(images, 1 - labels, seed, training=False)
  assert float(a["kl_0"]) != float(b["kl_0"])  # the posterior moved; the prior at 0 did not
  p0 = model.prior(images)["mu"][0]
  assert_allclose(p0, model.prior(images, latents=base)["mu"][0])


def test_noise_layout_mean_levels_and_prior_mean():
  model = make_model()
  images, _ = tiny_batch(2)
  seed = tf.constant([5, 6], tf.int64)
  logits = model.sample(images, 3, seed=seed, return_logits=True)[1]
  noise = tf.random.stateless_normal([2, 3, model.noise_dim(32, 32)], seed=seed)
  assert_allclose(model.sample_from_noise(images, noise), logits, rtol=1e-5, atol=1e-5)
  # One batch of all samples (the exports' path) computes the same.
  assert_allclose(model.sample_from_noise(images, noise, batched=True), logits, rtol=1e-5,
                  atol=1e-5)
  # Flat layout: scale 0's [h, w, d] block first.
  parts = model.split_noise(tf.reshape(noise, (6, -1)), 32, 32)
  assert_allclose(parts[1][0], tf.reshape(noise[0, 0, 4:36], (4, 4, 2)))
  # Means at every scale: every sample is the prior-mean prediction.
  means = model.sample(images, 3, seed=seed, mean_levels=[1, 1, 1], return_logits=True)[1]
  for m in range(3):
    assert_allclose(means[:, m], model(images), rtol=1e-5, atol=1e-5)
  # The mean at a scale ignores that scale's noise, and only that scale's.
  other = tf.concat([noise[..., :4], noise[..., 4:36] + 3.0, noise[..., 36:]], -1)
  local = model.sample_from_noise(images, other, mean_levels=[False, True, False])
  assert_allclose(local, model.sample_from_noise(images, noise, mean_levels=[0, 1, 0]),
                  rtol=1e-5, atol=1e-5)
  assert np.abs(model.sample_from_noise(images, other).numpy() - logits.numpy()).max() > 1e-4
  with pytest.raises(ValueError, match="mean_levels"):
    model.sample(images, 2, seed=0, mean_levels=[1, 0])


def test_encoder_runs_once_per_sampling_call():
  model = make_model()
  images, _ = tiny_batch(2)
  calls = []
  original = model.prior_net.encode
  model.prior_net.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
  model.sample(images, 7, seed=0)
  assert len(calls) == 1


def test_posterior_inputs_one_hot_first_without_shift():
  model = make_model(num_classes=3)
  images, labels = tiny_batch(1, num_classes=3)
  labels[0, 0, 0] = 255
  inp = model.posterior_inputs(tf.constant(images), tf.constant(labels)).numpy()
  assert inp.shape == (1, 32, 32, 4)
  assert_allclose(inp[..., 3], images[..., 0])
  assert_allclose(inp[0, 0, 0, :3], [0, 0, 0])
  assert_allclose(np.argmax(inp[0, 1:, :, :3], -1), labels[0, 1:])
  assert set(np.unique(inp[..., :3])) == {0.0, 1.0}


def test_gradients_reach_every_trainable_variable():
  model = make_model()
  variables, grads = loss_gradients(model, *tiny_batch(2))
  missing = [v.path for v, g in zip(variables, grads) if g is None or not np.any(g.numpy() != 0)]
  assert not missing  # the posterior has no unused blocks
  assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_model_config_round_trip_and_keras_file(tmp_path):
  model = make_model(beta=0.5, weight_decay=1e-4, log_sigma_bound=4.0, seed=3,
                     objective={"name": "geco", "kappa": 0.1})
  assert_config_round_trip(model)
  assert model.get_config()["objective"]["kappa"] == 0.1
  images, labels = tiny_batch(2)
  loaded = assert_keras_file_round_trip(model, str(tmp_path / "model.keras"))
  assert_allclose(loaded.sample(images, 3, seed=2, return_logits=True)[1],
                  model.sample(images, 3, seed=2, return_logits=True)[1], rtol=1e-5, atol=1e-5)
  assert_allclose(loaded.reconstruct(images, labels, use_posterior_mean=True),
                  model.reconstruct(images, labels, use_posterior_mean=True),
                  rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # ~50 s: tracing the train step dominates
def test_loss_decreases_on_tiny_fixed_batch():
  model = make_model(channels=(8, 8, 8, 8, 8))
  images, _ = tiny_batch(4)
  labels = (images[..., 0] > 0.5).astype("int32")
  model.compile(optimizer=keras.optimizers.Adam(3e-3))
  history = model.fit(images, labels, batch_size=4, epochs=40, verbose=0).history
  assert set(history) >= {"loss", "rec_loss", "kl", "kl_0", "kl_1", "kl_2", "pixel_ce"}
  assert history["rec_loss"][-1] < 0.5 * history["rec_loss"][0]
  assert all(np.isfinite(history["loss"]))


def test_registry_and_bad_arguments():
  assert get_model_class("hprob_unet") is HierarchicalProbUNet
  with pytest.raises(ValueError, match="latent scales"):
    HierarchicalProbUNet(channels=(4, 8), latent_dims=(1, 1))
  with pytest.raises(ValueError, match="multiples of 2\\^\\(levels - 1\\) = 16"):
    make_model(size=36)


# --- the binaries' libraries ----------------------------------------------------------------------

@pytest.mark.slow
def test_trains_restores_and_evaluates_beside_a_prob_unet(tmp_path):
  from tf_prob_unet import evaluate_lib, input_pipeline, run_dir, train_lib
  base = dict(dataset="synthetic_ambiguous/lidc_like_tiny", data_dir=str(tmp_path / "data"),
              batch_size=4, convs_per_block=1, lr_values=(1e-3,), lr_boundaries=(),
              checkpoint_every=3, summary_every=3, log_every=3, eval_every=100, eval_batches=1,
              shuffle_buffer=16)
  hpu = train_lib.TrainConfig(model="hprob_unet", model_dir=str(tmp_path / "hpu"),
                              channels=(4, 8, 8, 8, 8), blocks_per_level=1, latent_dims=(1, 2),
                              train_steps=3, **base)
  lines = []
  result = train_lib.run(hpu, log=lines.append)
  assert any("kl_1" in line for line in lines)
  model, info = run_dir.load_model(hpu.model_dir)
  assert info["kwargs"]["latent_dims"] == [1, 2] and info["kwargs"]["blocks_per_level"] == 1
  builder = input_pipeline.get_builder(hpu.dataset, hpu.data_dir)
  spec = input_pipeline.dataset_spec(builder)
  images, labels = next(iter(input_pipeline.train_dataset(builder, spec, 4, seed=1)))
  seed = tf.constant([0, 0])
  restored = model.loss_terms(images, labels, seed, training=False)
  trained = result["model"].loss_terms(images, labels, seed, training=False)
  for key in ("rec_loss", "kl", "kl_0", "kl_1", "weight_decay_loss"):
    assert float(restored[key]) == pytest.approx(float(trained[key]), rel=1e-6)
  pu = train_lib.TrainConfig(model="prob_unet", model_dir=str(tmp_path / "pu"), channels=(4, 8),
                             train_steps=2, **base)
  train_lib.run(pu, log=lambda *_: None)
  results = evaluate_lib.run(evaluate_lib.EvalConfig(
      model_dir=(hpu.model_dir, pu.model_dir), output_dir=str(tmp_path / "eval"),
      num_samples=(1, 4), batch_size=4), log=lambda *_: None)
  assert set(results) == {"hpu", "pu"}
  assert results["hpu"]["model"] == "hprob_unet" and results["hpu"]["seconds_per_sample"] > 0
  report = (tmp_path / "eval" / "report.md").read_text()
  assert "| hpu |" in report and "| pu |" in report and "hprob_unet" in report
  assert "ms / sample" in report


def _flagfile(name):
  from tests.helpers import REPO
  import os
  values = {}
  with open(os.path.join(REPO, name)) as f:
    for line in f:
      if line.startswith("--"):
        key, _, value = line[2:].strip().partition("=")
        values[key] = value
  return values


def test_flagfiles_name_valid_settings_and_the_release_architecture():
  import dataclasses
  from tf_prob_unet import train_lib
  fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
  lidc, demo = _flagfile("lidc_hpu.flags"), _flagfile("synthetic_hpu.flags")
  for flags in (lidc, demo):
    assert flags["model"] == "hprob_unet" and set(flags) <= fields, set(flags) - fields
  release = HierarchicalProbUNet()
  assert tuple(int(c) for c in lidc["channels"].split(",")) == release.channels
  assert tuple(int(d) for d in lidc["latent_dims"].split(",")) == release.latent_dims
  assert (int(lidc["blocks_per_level"]), int(lidc["convs_per_block"])) == (
      release.blocks_per_level, release.convs_per_block)
  assert float(lidc["weight_decay"]) == release.weight_decay == 2e-5
  assert (lidc["batch_size"], lidc["train_steps"]) == ("32", "240000")
  assert (lidc["objective"], float(lidc["geco_kappa"]), float(lidc["top_k_percentage"]),
          lidc["top_k"]) == ("geco", 0.05, 0.02, "stochastic")
  channels = demo["channels"].split(",")
  assert 64 % 2 ** (len(channels) - 1) == 0  # the 64x64 synthetic images fit the levels


def test_cpu_recipe_flagfile_trains_the_hpu_net_like_the_prob_unet_recipe():
  import dataclasses
  from tf_prob_unet import train_lib
  fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
  hpu, prob = _flagfile("lidc_cpu_hpu.flags"), _flagfile("lidc_cpu.flags")
  assert hpu["model"] == "hprob_unet" and set(hpu) <= fields, set(hpu) - fields
  # The results table compares models, not training: data, batch, objective and schedule agree.
  for key in ("dataset", "batch_size", "train_steps", "lr_values", "lr_boundaries", "seed"):
    assert hpu[key] == prob[key], key
  for key in ("beta", "weight_decay"):
    assert float(hpu[key]) == float(prob[key]), key
  assert hpu.get("objective", "elbo") == prob.get("objective", "elbo") == "elbo"
  levels = len(hpu["channels"].split(","))
  assert 2 ** (levels - 1) == 64  # 64x64 windows down to 1x1, as the release's 128 -> 1
