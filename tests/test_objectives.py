"""The training objectives: GECO's multiplier, EMA and state, the stochastic top-k, the ELBO."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_prob_unet import losses, objectives, run_dir, train_lib
from tf_prob_unet.models import Image2ImageVAE, ProbUNet

from conftest import tiny_batch


def _geco(**kw):
  layer = objectives.build(dict({"name": "geco"}, **kw))
  return layer


def _run_constraint(constant_ce, kappa, steps=30, lr=0.05):
  """Trains only GECO's multiplier on a fixed CE map; returns lambda before each step and after."""
  geco = _geco(kappa=kappa, top_k="off")
  optimizer = keras.optimizers.Adam(lr)
  ce = tf.fill([2, 4, 4], constant_ce)
  valid = tf.ones([2, 4, 4])
  lambdas, constraints = [], []
  for _ in range(steps):
    with tf.GradientTape() as tape:
      terms = geco(ce, valid, tf.zeros([2]))
    grads = tape.gradient(terms["loss"], [geco.multiplier_v])
    optimizer.apply_gradients(zip(grads, [geco.multiplier_v]))
    geco.commit(terms)
    lambdas.append(float(terms["geco_lambda"]))
    constraints.append(float(terms["geco_constraint"]))
  lambdas.append(float(geco.multiplier()))
  return np.array(lambdas), np.array(constraints)


def test_multiplier_starts_at_one_and_rises_while_the_constraint_is_positive():
  # CE 0.5 per pixel against kappa 0.05: C = 16 * (0.5 - 0.05) > 0 at every step.
  lambdas, constraints = _run_constraint(0.5, kappa=0.05)
  assert lambdas[0] == pytest.approx(1.0, abs=1e-6)
  assert (constraints > 0).all()
  assert (np.diff(lambdas) > 0).all(), lambdas
  assert lambdas[-1] > 1.5


def test_multiplier_falls_while_the_constraint_is_negative():
  lambdas, constraints = _run_constraint(0.01, kappa=0.05)
  assert lambdas[0] == pytest.approx(1.0, abs=1e-6)
  assert (constraints < 0).all()
  assert (np.diff(lambdas) < 0).all(), lambdas
  assert 0.0 < lambdas[-1] < 0.6


def test_ema_is_the_first_value_then_decays_and_passes_the_gradient_through():
  geco = _geco(kappa=0.0, decay=0.9, top_k="off")
  valid = tf.ones([1, 2, 2])
  values = [1.0, 3.0, 2.0]
  ema = None
  for value in values:
    ce = tf.Variable(tf.fill([1, 2, 2], value / 4.0))
    with tf.GradientTape() as tape:
      terms = geco(ce, valid, tf.zeros([1]))
    ema = value if ema is None else 0.9 * ema + 0.1 * value
    assert float(terms["geco_constraint"]) == pytest.approx(ema, rel=1e-6)
    # d(lambda * C)/d ce = lambda * 1 per selected pixel (straight through the average).
    np.testing.assert_allclose(tape.gradient(terms["loss"], ce).numpy(),
                               float(terms["geco_lambda"]), rtol=1e-6)
    geco.commit(terms)
  # Calling without committing leaves the state alone (validation does not move it).
  before = float(geco.rec_ema.numpy())
  geco(tf.fill([1, 2, 2], 100.0), valid, tf.zeros([1]))
  assert float(geco.rec_ema.numpy()) == before == pytest.approx(ema)


def test_loss_is_lambda_times_constraint_plus_kl():
  geco = _geco(kappa=0.05, top_k="deterministic", top_k_percentage=0.25)
  ce = tf.constant(np.arange(32, dtype=np.float32).reshape(2, 4, 4) / 10.0)
  terms = geco(ce, tf.ones([2, 4, 4]), tf.constant([1.0, 3.0]))
  # k = 8 of 32: the 8 largest CEs (2.4 .. 3.1) all lie in image 2.
  assert float(terms["rec_loss"]) == pytest.approx(sum(np.arange(24, 32) / 10.0) / 2, rel=1e-6)
  assert float(terms["geco_selected"]) == 4.0
  c = float(terms["rec_loss"]) - 0.05 * 4.0
  assert float(terms["geco_constraint"]) == pytest.approx(c, rel=1e-6)
  assert float(terms["loss"]) == pytest.approx(1.0 * c + 2.0, rel=1e-6)


# --- top-k ----------------------------------------------------------------------------------


def _selection_counts(ce, valid, percentage, draws):
  counts = np.zeros(ce.shape, np.float64)
  draw = tf.function(lambda s: objectives.top_k_mask(ce, valid, percentage, "stochastic", s))
  for d in range(draws):
    seeds = tf.constant([[d, b] for b in range(ce.shape[0])], tf.int64)
    counts += draw(seeds).numpy()
  return counts


def test_stochastic_top_k_follows_the_ce_and_never_picks_ignored_pixels():
  # 2 images of 2x4 pixels; the ignored pixels carry the largest CE of all.
  ce = np.array([[[0.1, 0.2, 0.4, 0.8], [1.6, 0.0, 5.0, 9.0]],
                 [[0.3, 0.3, 0.6, 1.2], [2.4, 0.05, 7.0, 0.9]]], np.float32)
  valid = np.ones_like(ce)
  valid[0, 1, 3] = valid[1, 1, 2] = 0.0
  p = (ce * valid).ravel() / (ce * valid).sum()
  draws = 3000
  # k = floor(2 / 16 * 16) = 2 pixels per draw, without replacement: pixel i is in the sample
  # with probability p_i + sum_{j != i} p_j p_i / (1 - p_j) (Plackett-Luce).
  counts = _selection_counts(tf.constant(ce), tf.constant(valid), 2 / 16, draws).ravel()
  assert counts.sum() == 2 * draws
  assert counts[valid.ravel() == 0].sum() == 0
  inclusion = np.array([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(len(p)) if j != i)
                        for i in range(len(p))])
  expected = draws * inclusion
  z = (counts - expected) / np.sqrt(np.maximum(expected * (1 - inclusion), 1e-12))
  assert np.abs(z[expected > 0]).max() < 4.5, (counts, expected)
  # A pixel with CE 0 is (almost) never chosen; higher CE, more often.
  order = np.argsort(p)
  assert np.all(np.diff(counts[order][p[order] > 0.02]) >= -4.5 * np.sqrt(draws))
  # A one-pixel draw is exactly CE-proportional: a chi-square test at the 1e-4 level.
  counts1 = _selection_counts(tf.constant(ce), tf.constant(valid), 1 / 16, draws).ravel()
  assert counts1[valid.ravel() == 0].sum() == 0
  keep = p > 0
  chi2 = (((counts1[keep] - draws * p[keep]) ** 2) / (draws * p[keep])).sum()
  from scipy import stats
  assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4, (counts1, draws * p)


def test_top_k_never_selects_ignored_pixels_even_when_k_exceeds_the_valid_ones():
  ce = tf.random.uniform([2, 4, 4], seed=1) + 0.1
  valid = tf.cast(tf.random.uniform([2, 4, 4], seed=2) < 0.3, tf.float32)
  for mode in ("stochastic", "deterministic", "off"):
    mask = objectives.top_k_mask(ce, valid, 1.0, mode,
                                 tf.constant([[0, 0], [0, 1]], tf.int64)).numpy()
    np.testing.assert_array_equal(mask, valid.numpy())


def test_deterministic_top_k_takes_the_largest_over_the_whole_batch():
  ce = tf.constant(np.random.default_rng(0).random((3, 5, 5)), tf.float32)
  mask = objectives.top_k_mask(ce, tf.ones_like(ce), 0.1, "deterministic").numpy()
  k = int(np.floor(0.1 * 75))
  assert mask.sum() == k
  threshold = np.sort(ce.numpy().ravel())[-k]
  np.testing.assert_array_equal(mask.astype(bool), ce.numpy() >= threshold)


# --- models and the train loop ---------------------------------------------------------------


def test_elbo_terms_match_the_reference_reconstruction_loss():
  images, labels = tiny_batch(batch=2, size=8)
  logits = tf.random.normal([2, 8, 8, 2], seed=3)
  labels = np.array(labels)
  labels[0, :2] = 255
  ce, valid = losses.pixel_cross_entropy(logits, labels)
  terms = objectives.elbo_terms(ce, valid, tf.constant([1.0, 2.0]), beta=10.0)
  rec_sum, rec_mean = losses.reconstruction_loss(logits, labels)
  assert float(terms["rec_loss"]) == pytest.approx(float(tf.reduce_mean(rec_sum)), rel=1e-6)
  assert float(terms["pixel_ce"]) == pytest.approx(float(tf.reduce_mean(rec_mean)), rel=1e-6)
  assert float(terms["loss"]) == pytest.approx(float(terms["rec_loss"]) + 15.0, rel=1e-6)


def test_model_config_with_geco_round_trips_and_reports_the_multiplier():
  spec = {"name": "geco", "kappa": 0.1, "decay": 0.95, "rate": 0.02, "top_k": "deterministic",
          "top_k_percentage": 0.05}
  model = ProbUNet(channels=(4, 8), convs_per_block=1, latent_dim=2, objective=spec)
  model.build((None, 16, 16, 1))
  config = model.get_config()
  assert config["objective"] == spec
  clone = ProbUNet.from_config(config)
  assert clone.get_config() == config
  assert {"geco_lambda", "geco_constraint"} <= set(model.tracker_names)
  paths = {v.path for v in model.variables}
  assert {"prob_unet/geco/multiplier_v", "prob_unet/geco/rec_ema",
          "prob_unet/geco/ema_initialized"} <= {"prob_unet/" + p.split("/", 1)[1] for p in paths}
  assert any(v is model.objective.multiplier_v for v in model.trainable_variables)
  geco = objectives.GECO.from_config(model.objective.get_config())
  assert geco.get_config() == model.objective.get_config()
  # The ELBO default adds nothing to the config (old runs keep their meaning).
  assert "objective" not in ProbUNet(channels=(4, 8)).get_config()


@pytest.mark.parametrize("model_class", [ProbUNet, Image2ImageVAE])
def test_every_latent_model_trains_with_geco_through_elbo_terms(model_class):
  images, labels = tiny_batch(batch=2, size=16)
  model = model_class(channels=(4, 8), convs_per_block=1, latent_dim=2, beta=50.0,
                      objective={"name": "geco", "top_k": "deterministic", "kappa": 0.0})
  model.build((None, 16, 16, 1))
  terms = model.loss_terms(tf.constant(images), tf.constant(labels),
                           tf.constant([[0, 0], [0, 1]], tf.int64))
  # k = floor(0.02 * 2 * 256) = 10 pixels; lambda = 1; beta is not used; the EMA starts at rec.
  assert float(terms["geco_selected"]) == 5.0
  assert float(terms["geco_lambda"]) == pytest.approx(1.0)
  assert float(terms["geco_constraint"]) == pytest.approx(float(terms["rec_loss"]), rel=1e-6)
  assert float(terms["loss"]) == pytest.approx(
      float(terms["rec_loss"]) + float(terms["kl"]) + float(terms["weight_decay_loss"]),
      rel=1e-5)
  assert model.tracker_names[-2:] == ("geco_lambda", "geco_constraint")


def test_geco_needs_a_latent_model_and_valid_settings():
  with pytest.raises(ValueError, match=r"--objective: expected elbo for --model=unet"):
    train_lib.TrainConfig(model="unet", objective="geco").validate()
  with pytest.raises(ValueError, match=r"--top_k: expected one of"):
    train_lib.TrainConfig(objective="geco", top_k="random").validate()
  with pytest.raises(ValueError, match=r"--objective: expected one of"):
    train_lib.TrainConfig(objective="vi").validate()
  train_lib.TrainConfig(model="image2image_vae", objective="geco").validate()


def _geco_config(root, name, **kw):
  base = dict(dataset="synthetic_ambiguous/lidc_like_tiny", data_dir=str(root / "data"),
              model_dir=str(root / name), train_steps=4, batch_size=4, channels=(4, 8),
              convs_per_block=1, lr_values=(1e-2,), lr_boundaries=(), checkpoint_every=2,
              summary_every=1, log_every=1, eval_every=100, eval_batches=1, shuffle_buffer=16,
              objective="geco")
  base.update(kw)
  return train_lib.TrainConfig(**base)


def _geco_state(model_dir, checkpoint=None):
  model, _ = run_dir.load_model(model_dir, checkpoint)
  return {k: v.numpy() for k, v in run_dir.model_weights(model).items()}


@pytest.mark.slow
def test_a_resumed_geco_run_continues_lambda_and_the_ema_exactly(tmp_path):
  whole = train_lib.run(_geco_config(tmp_path, "whole"), log=lambda *_: None)
  train_lib.run(_geco_config(tmp_path, "resumed", train_steps=2), log=lambda *_: None)
  halfway = _geco_state(str(tmp_path / "resumed"))
  assert halfway["geco/ema_initialized"] == 1.0 and halfway["geco/rec_ema"] > 0
  lines = []
  resumed = train_lib.run(_geco_config(tmp_path, "resumed"), log=lines.append)
  assert any(line.startswith("Restored") for line in lines)
  a, b = _geco_state(str(tmp_path / "whole")), _geco_state(str(tmp_path / "resumed"))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert whole["logs"]["geco_lambda"] == resumed["logs"]["geco_lambda"]
  # The state moved after the restore: lambda rose (the constraint is positive at this CE) and
  # the EMA is no longer the value at step 2.
  assert a["geco/rec_ema"] != halfway["geco/rec_ema"]
  assert a["geco/multiplier_v"] > halfway["geco/multiplier_v"]
  # A restart that lost the EMA would re-initialise it from the first batch: not what happened.
  assert whole["logs"]["geco_constraint"] == resumed["logs"]["geco_constraint"]
