"""The CPU-tuned gradients run only on CPU + float32; GPUs and mixed policies get stock Keras."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TINY_CHANNELS
from tf_prob_unet import models
from tf_prob_unet import train_lib
from tf_prob_unet.layers import shifted_conv2d


@pytest.fixture
def restore_policy():
  previous = keras.mixed_precision.global_policy()
  yield
  keras.mixed_precision.set_global_policy(previous)


def _model(channels=(16, 16, 16)):
  model = models.get_model_class("prob_unet")(num_classes=2, channels=channels,
                                              convs_per_block=1, latent_dim=3)
  model.build((None, 16, 16, 1))
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  model.optimizer.build(model.trainable_variables)
  return model


def _batch():
  rng = np.random.default_rng(0)
  return (tf.constant(rng.random((2, 16, 16, 1)), tf.float32),
          tf.constant(rng.integers(0, 2, (2, 16, 16)), tf.int32))


def _custom_gradients(model):
  """Ops of the traced training step, outside Keras' optimizer, that carry a custom gradient
  (`tf.custom_gradient`)."""
  graph = tf.function(model.train_step_terms).get_concrete_function(_batch()).graph
  found = []
  for op in graph.get_operations():
    try:
      op.get_attr("_gradient_op_type")
      if not op.name.startswith(model.optimizer.name):
        found.append(op.name)
    except ValueError:
      pass
  return found


def test_cpu_float32_uses_the_tuned_gradients(monkeypatch):
  monkeypatch.setattr(shifted_conv2d, "MIN_CHANNELS", 4)
  assert _custom_gradients(_model())  # the control: the check below can fail


def test_visible_gpu_means_stock_conv2d(monkeypatch):
  monkeypatch.setattr(shifted_conv2d, "MIN_CHANNELS", 4)
  real = tf.config.list_logical_devices

  def with_gpu(device_type=None):
    if device_type == "GPU":
      return [tf.config.LogicalDevice("/device:GPU:0", "GPU")]
    return real(device_type)
  monkeypatch.setattr(tf.config, "list_logical_devices", with_gpu)
  assert _custom_gradients(_model()) == []


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_policy_means_stock_conv2d(monkeypatch, restore_policy, policy):
  monkeypatch.setattr(shifted_conv2d, "MIN_CHANNELS", 4)
  keras.mixed_precision.set_global_policy(policy)
  assert _custom_gradients(_model()) == []


def test_bfloat16_training_step_on_cpu(restore_policy):
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  model = _model(TINY_CHANNELS)
  before = [v.numpy().copy() for v in model.trainable_variables]
  terms = tf.function(model.train_step_terms)(_batch())
  for name in ("loss", "rec_loss", "kl"):
    assert terms[name].dtype == tf.float32, name
    assert np.isfinite(terms[name].numpy()), name
  assert model.prior(_batch()[0]).dtype == tf.float32  # distributions stay float32
  changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
  assert all(v.dtype == tf.float32 for v in model.trainable_variables) and any(changed)


def test_dtype_policy_is_validated():
  with pytest.raises(ValueError, match=r"--dtype_policy: expected one of .* found 'float16'"):
    train_lib.TrainConfig(dtype_policy="float16").validate()
