"""The baselines behind the shared `sample(images, num_samples)` contract, on tiny computation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TINY_CHANNELS, tiny_batch
from tests.helpers import assert_allclose, assert_config_round_trip
from tf_prob_unet import evaluate_lib, losses, run_dir, train_lib
from tf_prob_unet.layers import SegmentationHeads
from tf_prob_unet.models import MODELS, get_model_class

BASELINES = ["unet", "dropout_unet", "unet_ensemble", "m_heads", "image2image_vae"]


# Fixed-sample models get 2 members / heads (the shape tests draw 2 samples); the tiny Dropout
# U-Net has 3 levels, and dropout on the 2 innermost keeps the input pixels intact.
SIZES = {"unet_ensemble": {"ensemble_size": 2}, "m_heads": {"num_heads": 2},
         "dropout_unet": {"dropout_levels": 2}}


def make_model(name, num_classes=2, in_channels=1, size=32, **kw):
  kw.setdefault("channels", TINY_CHANNELS)
  kw.setdefault("convs_per_block", 2)
  kw.setdefault("num_head_hidden", 1)
  for key, value in SIZES.get(name, {}).items():
    kw.setdefault(key, value)
  model = get_model_class(name)(num_classes=num_classes, **kw)
  model.build((None, size, size, in_channels))
  return model


def test_registry_lists_every_baseline():
  assert set(BASELINES) <= set(MODELS)


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("num_classes,in_channels", [(2, 1), (5, 3)])
def test_shapes(name, num_classes, in_channels):
  model = make_model(name, num_classes, in_channels)
  images, _ = tiny_batch(3, 32, in_channels, num_classes)
  assert tuple(model(images).shape) == (3, 32, 32, num_classes)
  labels, logits, probs = model.sample(images, num_samples=2, seed=0, return_logits=True,
                                       return_probs=True)
  assert tuple(labels.shape) == (3, 2, 32, 32) and labels.dtype == tf.int32
  assert tuple(logits.shape) == (3, 2, 32, 32, num_classes)
  assert_allclose(tf.reduce_sum(probs, -1), np.ones((3, 2, 32, 32)), atol=1e-5)
  np.testing.assert_array_equal(labels.numpy(), np.argmax(logits.numpy(), -1))
  assert tuple(model.sample(images, 1, seed=0).shape) == (3, 1, 32, 32)


@pytest.mark.parametrize("name", BASELINES)
def test_config_round_trip_and_keras_file(name, tmp_path):
  model = make_model(name, 3, head_channels=6, weight_decay=2e-5)
  assert_config_round_trip(model)
  images, _ = tiny_batch(2, num_classes=3)
  path = str(tmp_path / "model.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
  assert_allclose(loaded.sample(images, 2, seed=3, return_logits=True)[1],
                  model.sample(images, 2, seed=3, return_logits=True)[1], rtol=1e-5, atol=1e-5)
  assert_allclose(loaded(images), model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BASELINES)
def test_loss_decreases_on_tiny_fixed_batch(name):
  model = make_model(name)
  images, _ = tiny_batch(4)
  labels = (images[..., 0] > 0.5).astype("int32")  # learnable: the bright pixels
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  history = model.fit(images, labels, batch_size=4, epochs=40, verbose=0).history
  assert set(history) >= {"loss", "rec_loss", "weight_decay_loss", "pixel_ce"}
  assert all(np.isfinite(history["loss"]))
  assert history["rec_loss"][0] > 0
  assert history["rec_loss"][-1] < 0.8 * history["rec_loss"][0], history["rec_loss"][::10]


@pytest.mark.parametrize("name", BASELINES)
def test_gradients_reach_every_trainable_variable(name):
  model = make_model(name)
  images, labels = tiny_batch(2)
  with tf.GradientTape() as tape:
    loss = model.loss_terms(images, labels, tf.constant([0, 1], tf.int64))["loss"]
  grads = tape.gradient(loss, model.trainable_variables)
  missing = [v.path for v, g in zip(model.trainable_variables, grads)
             if g is None or not np.any(g.numpy() != 0)]
  assert not missing
  assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_unet_samples_are_copies_of_the_prediction_and_loss_is_the_ce():
  model = make_model("unet", weight_decay=0.0)
  images, labels = tiny_batch(2)
  logits = model.sample(images, 3, seed=1, return_logits=True)[1].numpy()
  for m in range(3):
    assert_allclose(logits[:, m], model(images), rtol=1e-6, atol=1e-6)
  terms = model.loss_terms(images, labels, tf.constant([0, 0], tf.int64), training=False)
  out = model(images).numpy()
  logp = out - np.log(np.sum(np.exp(out), -1, keepdims=True))
  ce = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  assert float(terms["rec_loss"]) == pytest.approx(ce.sum((1, 2)).mean(), rel=1e-4)
  assert float(terms["loss"]) == pytest.approx(float(terms["rec_loss"]), rel=1e-6)


def test_segmentation_heads_share_hidden_layers_and_branch_into_logits():
  heads = SegmentationHeads(3, channels=5, num_hidden=2, num_heads=4, weight_decay=1e-5)
  features = tf.random.normal((2, 6, 7, 8))
  heads.build(features.shape)
  assert_config_round_trip(heads)
  out = heads(features).numpy()
  assert out.shape == (2, 4, 6, 7, 3)
  hidden = heads.hidden[1](heads.hidden[0](features)).numpy()
  kernel, bias = heads.logits.kernel.numpy(), heads.logits.bias.numpy()
  for m in range(4):
    cols = slice(3 * m, 3 * m + 3)
    assert_allclose(out[:, m], hidden @ kernel[:, cols] + bias[cols], rtol=1e-5, atol=1e-5)
  assert np.abs(out[:, 0] - out[:, 1]).max() > 1e-3
  assert len(heads.losses) == 2  # weight decay on the hidden kernels only
  with pytest.raises(ValueError, match="num_heads"):
    SegmentationHeads(2, num_heads=0)


def _tiny_config(tmp_path, name, **kw):
  base = dict(model=name, dataset="synthetic_ambiguous/lidc_like_tiny",
              data_dir=str(tmp_path / "data"), model_dir=str(tmp_path / name), train_steps=3,
              batch_size=4, channels=(4, 8), convs_per_block=1, num_fcomb_hidden=1,
              lr_values=(1e-3,), lr_boundaries=(), checkpoint_every=3, summary_every=3,
              log_every=3, eval_every=3, eval_batches=1, shuffle_buffer=16)
  base.update(kw)
  return train_lib.TrainConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_train_and_evaluate_libraries_run_every_baseline(name, tmp_path):
  config = _tiny_config(tmp_path, name)
  trained = train_lib.run(config, log=lambda *_: None)
  assert trained["step"] == 3 and np.isfinite(trained["logs"]["loss"])
  model, info = run_dir.load_model(config.model_dir)
  assert info["model"] == name and type(model) is get_model_class(name)
  images = tf.random.uniform((2,) + tuple(info["input_shape"]))
  assert_allclose(model(images), trained["model"](images), rtol=1e-5, atol=1e-5)
  results = evaluate_lib.run(evaluate_lib.EvalConfig(
      model_dir=(config.model_dir,), output_dir=str(tmp_path / "eval"), num_samples=(1, 2)),
      log=lambda *_: None)
  r = results[name]
  assert set(r["ged"]) == {"1", "2"} and all(np.isfinite(v) for v in r["ged"].values())
  assert np.isfinite(r["mode_tv"]["2"])


# --- model-specific behaviour ---------------------------------------------------------------


def test_m_heads_loss_weights_on_a_hand_made_case():
  per_head = tf.constant([[3.0, 1.0, 2.0, 5.0],
                          [0.5, 4.0, 4.0, 4.0]])
  got = losses.m_heads_loss(per_head, epsilon=0.05).numpy()
  other = 0.05 / 3
  assert got[0] == pytest.approx(0.95 * 1.0 + other * (3.0 + 2.0 + 5.0), rel=1e-6)
  assert got[1] == pytest.approx(0.95 * 0.5 + other * 12.0, rel=1e-6)
  # The weights are constants: d loss / d head = the head's weight.
  with tf.GradientTape() as tape:
    tape.watch(per_head)
    total = tf.reduce_sum(losses.m_heads_loss(per_head, epsilon=0.05))
  assert_allclose(tape.gradient(total, per_head),
                  [[other, 0.95, other, other], [0.95, other, other, other]], rtol=1e-6)
  assert float(losses.m_heads_loss(tf.constant([[2.5]]), 0.05)[0]) == 2.5  # one head: weight 1


def test_m_heads_model_loss_uses_best_head_per_image():
  model = make_model("m_heads", num_heads=3, epsilon=0.1, weight_decay=0.0)
  images, labels = tiny_batch(2)
  terms = model.loss_terms(images, labels, tf.constant([0, 0], tf.int64), training=False)
  per_head, _ = losses.reconstruction_loss(model.head_logits(images),
                                           np.repeat(labels[:, None], 3, 1))
  per_head = per_head.numpy()
  expected = [0.9 * row.min() + 0.05 * (row.sum() - row.min()) for row in per_head]
  assert float(terms["rec_loss"]) == pytest.approx(np.mean(expected), rel=1e-5)
  assert float(terms["best_head_rec_loss"]) == pytest.approx(per_head.min(1).mean(), rel=1e-5)


@pytest.mark.parametrize("name,size_key", [("m_heads", "num_heads"),
                                           ("unet_ensemble", "ensemble_size")])
def test_fixed_sample_models_return_first_m_and_refuse_more(name, size_key):
  model = make_model(name, **{size_key: 3})
  images, _ = tiny_batch(2)
  all_three = model.sample(images, 3, return_logits=True)[1].numpy()
  first_two = model.sample(images, 2, return_logits=True)[1].numpy()
  assert_allclose(first_two, all_three[:, :2], rtol=1e-6, atol=1e-6)
  assert np.abs(all_three[:, 0] - all_three[:, 1]).max() > 1e-4  # heads / members differ
  with pytest.raises(ValueError, match="num_samples: expected 1 to 3"):
    model.sample(images, 4)
  # The deterministic prediction is the mean of all heads' / members' softmax.
  mean_probs = tf.nn.softmax(all_three, -1).numpy().mean(1)
  assert_allclose(tf.nn.softmax(model(images), -1), mean_probs, rtol=1e-5, atol=1e-6)


def test_ensemble_members_are_independent_and_one_pass_equals_separate_training():
  images, labels = tiny_batch(2)
  labels = (images[..., 0] > 0.5).astype("int32")
  ensemble = make_model("unet_ensemble", ensemble_size=2)
  first, second = ensemble.members
  assert not any(np.allclose(a, b) for a, b in zip(first.get_weights()[::2],
                                                   second.get_weights()[::2]))
  alone = get_model_class("unet")(**ensemble.member_kwargs)
  alone.build((None, 32, 32, 1))
  for target, source in zip(alone.trainable_variables, first.trainable_variables):
    target.assign(source)
  initial = alone.get_weights()
  for model in (ensemble, alone):
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(images, labels, batch_size=2, epochs=2, shuffle=False, verbose=0)
  # Member 0, trained in one pass with member 1 (summed losses), followed the updates it follows
  # alone: Adam is per parameter and the other member's loss has no gradient here.
  moved = [np.abs(a - b).max() for a, b in zip(first.get_weights(), alone.get_weights())]
  assert max(moved) < 1e-5
  assert max(np.abs(a - b).max() for a, b in zip(alone.get_weights(), initial)) > 1e-3
  terms = ensemble.loss_terms(images, labels, tf.constant([0, 0], tf.int64), training=False)
  parts = [m.loss_terms(images, labels, tf.constant([0, 0], tf.int64), training=False)
           for m in ensemble.members]
  assert float(terms["loss"]) == pytest.approx(sum(float(p["loss"]) for p in parts), rel=1e-6)


def test_ensemble_split_batch_gives_each_member_its_own_slice():
  images, labels = tiny_batch(4)
  ensemble = make_model("unet_ensemble", ensemble_size=2, member_batch="split")
  assert_config_round_trip(ensemble)
  seed = tf.constant([0, 0], tf.int64)
  terms = ensemble.loss_terms(images, labels, seed, training=True)
  parts = [m.loss_terms(images[2 * k:2 * k + 2], labels[2 * k:2 * k + 2], seed, training=True)
           for k, m in enumerate(ensemble.members)]
  assert float(terms["loss"]) == pytest.approx(sum(float(p["loss"]) for p in parts), rel=1e-6)
  assert float(terms["rec_loss"]) == pytest.approx(
      np.mean([float(p["rec_loss"]) for p in parts]), rel=1e-6)
  # Evaluation calls (validation batches of any size, here 3) score every member on every image.
  terms = ensemble.loss_terms(images[:3], labels[:3], seed, training=False)
  parts = [m.loss_terms(images[:3], labels[:3], seed, training=False) for m in ensemble.members]
  assert float(terms["loss"]) == pytest.approx(sum(float(p["loss"]) for p in parts), rel=1e-6)
  with pytest.raises(ValueError, match="member_batch"):
    get_model_class("unet_ensemble")(member_batch="halves")


def test_dropout_active_when_sampling_and_off_in_the_prediction():
  model = make_model("dropout_unet", num_classes=3)
  images, _ = tiny_batch(2, num_classes=3)
  logits = model.sample(images, 2, seed=5, return_logits=True)[1].numpy()
  assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-3  # two samples differ
  assert_allclose(logits, model.sample(images, 2, seed=5, return_logits=True)[1])  # seeded
  other = model.sample(images, 2, seed=6, return_logits=True)[1].numpy()
  assert np.abs(logits - other).max() > 1e-3
  # The prediction has no dropout: it equals a plain U-Net with the same weights.
  plain = get_model_class("unet").from_config(
      {k: v for k, v in model.get_config().items() if not k.startswith("dropout_")})
  plain.build((None, 32, 32, 1))
  for target, source in zip(plain.trainable_variables, model.trainable_variables):
    target.assign(source)
  assert_allclose(model(images), plain(images), rtol=1e-6, atol=1e-6)
  assert np.abs(logits[:, 0] - plain(images).numpy()).max() > 1e-3


def test_dropout_sits_on_the_three_innermost_encoder_and_decoder_blocks():
  model = make_model("dropout_unet", channels=(4, 8, 16, 16, 16), dropout_levels=3)
  encoder = [b.dropout_rate for b in model.unet.encoder.blocks]
  decoder = [b.dropout_rate for b in model.unet.decoder_blocks]  # innermost first
  assert encoder == [0.0, 0.0, 0.5, 0.5, 0.5]
  assert decoder == [0.5, 0.5, 0.5, 0.0]


def test_image2image_vae_prior_does_not_depend_on_the_image():
  model = make_model("image2image_vae", latent_dim=3)
  a, labels = tiny_batch(2, seed=0)
  b, _ = tiny_batch(2, seed=1)
  pa, pb = model.prior(tf.constant(a)), model.prior(tf.constant(b) * 3.0)
  for p in (pa, pb):
    assert_allclose(p.mean(), np.zeros((2, 3)))
    assert_allclose(p.stddev(), np.ones((2, 3)))
  assert not any("prior" in v.path for v in model.variables)  # nothing to learn in the prior
  # The posterior sees only the segmentation: changing the image leaves it unchanged.
  assert_allclose(model.posterior(labels).mean(), model.posterior(labels).mean())
  assert model.posterior_net.encoder.blocks[0].convs[0].kernel.shape[2] == 2  # K channels only
  # z enters the U-Net's input: different latents give different logits for one image.
  z = tf.constant([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
  out1 = model.decode(tf.constant(a), z).numpy()
  out2 = model.decode(tf.constant(a), -z).numpy()
  assert np.abs(out1 - out2).max() > 1e-4
  assert model.unet.encoder.blocks[0].convs[0].kernel.shape[2] == 1 + 3
  terms = model.loss_terms(a, labels, tf.constant([1, 2], tf.int64), training=False)
  q = model.posterior(labels)
  mu, sd = q.mean().numpy(), q.stddev().numpy()
  kl = np.mean(np.sum(0.5 * (sd ** 2 + mu ** 2 - 1) - np.log(sd), -1))
  assert float(terms["kl"]) == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_bad_baseline_arguments_name_themselves():
  with pytest.raises(ValueError, match="dropout_rate"):
    get_model_class("dropout_unet")(dropout_rate=1.0)
  with pytest.raises(ValueError, match="num_heads"):
    get_model_class("m_heads")(num_heads=0)
  with pytest.raises(ValueError, match="ensemble_size"):
    get_model_class("unet_ensemble")(ensemble_size=0)
