"""The baselines behind the shared `sample(images, num_samples)` contract, on tiny computation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TINY_CHANNELS, tiny_batch
from tests.helpers import assert_allclose, assert_config_round_trip
from tf_prob_unet import evaluate_lib, train_lib
from tf_prob_unet.layers import SegmentationHeads
from tf_prob_unet.models import MODELS, get_model_class

BASELINES = ["unet"]


def make_model(name, num_classes=2, in_channels=1, size=32, **kw):
  kw.setdefault("channels", TINY_CHANNELS)
  kw.setdefault("convs_per_block", 2)
  kw.setdefault("num_head_hidden", 1)
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
  labels, logits, probs = model.sample(images, num_samples=4, seed=0, return_logits=True,
                                       return_probs=True)
  assert tuple(labels.shape) == (3, 4, 32, 32) and labels.dtype == tf.int32
  assert tuple(logits.shape) == (3, 4, 32, 32, num_classes)
  assert_allclose(tf.reduce_sum(probs, -1), np.ones((3, 4, 32, 32)), atol=1e-5)
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
  model.compile(optimizer=keras.optimizers.Adam(3e-3))
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


def test_segmentation_heads_equal_per_head_dense_stacks():
  heads = SegmentationHeads(3, channels=5, num_hidden=2, num_heads=4, weight_decay=1e-5)
  features = tf.random.normal((2, 6, 7, 8))
  heads.build(features.shape)
  assert_config_round_trip(heads)
  out = heads(features).numpy()
  assert out.shape == (2, 4, 6, 7, 3)
  for m, layers in enumerate(heads.heads):
    x = features
    for i, dense in enumerate(layers):
      x = dense(x)
      if i < len(layers) - 1:
        x = tf.nn.relu(x)
    assert_allclose(out[:, m], x, rtol=1e-5, atol=1e-5)
  # Weight decay on the hidden kernels only: 2 hidden layers x 4 heads.
  assert len(heads.losses) == 8
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
  model, info = train_lib.load_model(config.model_dir)
  assert info["model"] == name and type(model) is get_model_class(name)
  images = tf.random.uniform((2,) + tuple(info["input_shape"]))
  assert_allclose(model(images), trained["model"](images), rtol=1e-5, atol=1e-5)
  results = evaluate_lib.run(evaluate_lib.EvalConfig(
      model_dir=(config.model_dir,), output_dir=str(tmp_path / "eval"), num_samples=(1, 2)),
      log=lambda *_: None)
  r = results[name]
  assert set(r["ged"]) == {"1", "2"} and all(np.isfinite(v) for v in r["ged"].values())
  assert np.isfinite(r["mode_tv"]["2"])
