"""Layer contract tests: shapes, config round trips, weight decay, f_comb's algebra."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.conftest import TINY_CHANNELS
from tests.helpers import assert_allclose, assert_config_round_trip
from tf_prob_unet.layers import AxisAlignedConvGaussian, ConvBlock, Encoder, FComb, UNet
from tf_prob_unet.layers.gaussian_head import bound_log_sigma
from tf_prob_unet.layers.unet import resize_bilinear


def _assert_round_trip_rebuild_equal(layer, x):
  """Config round trip, then the clone with the layer's weights computes the same output."""
  clone = assert_config_round_trip(layer)
  clone.build(x.shape)
  clone.set_weights(layer.get_weights())
  for a, b in zip(_as_list(layer(x)), _as_list(clone(x))):
    assert_allclose(a, b)


def _as_list(y):
  return y if isinstance(y, list) else [y]


def test_conv_block_shapes_and_round_trip():
  block = ConvBlock(8, num_convs=2, pool=True, name="b")
  x = np.random.rand(2, 9, 10, 3).astype("float32")
  block.build(x.shape)
  y = block(x)
  assert tuple(y.shape) == (2, 5, 5, 8)
  assert block.compute_output_shape(x.shape) == (2, 5, 5, 8)
  _assert_round_trip_rebuild_equal(block, x)


def test_encoder_levels_and_round_trip():
  enc = Encoder(TINY_CHANNELS, convs_per_block=2)
  x = np.random.rand(2, 32, 32, 1).astype("float32")
  enc.build(x.shape)
  feats = enc(x)
  assert [tuple(f.shape) for f in feats] == [(2, 32, 32, 4), (2, 16, 16, 8), (2, 8, 8, 16)]
  _assert_round_trip_rebuild_equal(enc, x)


@pytest.mark.parametrize("mode", ["align_corners", "half_pixel"])
def test_unet_output_is_full_resolution_features(mode):
  unet = UNet(TINY_CHANNELS, convs_per_block=3, upsample_mode=mode)
  x = np.random.rand(2, 32, 32, 3).astype("float32")
  unet.build(x.shape)
  y = unet(x)
  assert tuple(y.shape) == (2, 32, 32, TINY_CHANNELS[0])
  assert np.all(y.numpy() >= 0)  # ReLU features, no logits
  _assert_round_trip_rebuild_equal(unet, x)


def test_unet_odd_size_upsamples_to_skip_size():
  unet = UNet(TINY_CHANNELS, convs_per_block=1)
  x = np.random.rand(1, 30, 22, 1).astype("float32")
  unet.build(x.shape)
  assert tuple(unet(x).shape) == (1, 30, 22, 4)


def test_unet_rejects_bad_upsample_mode():
  with pytest.raises(ValueError, match="upsample_mode"):
    UNet(TINY_CHANNELS, upsample_mode="nearest")


def test_align_corners_resize_matches_corner_aligned_interpolation():
  x = np.arange(4, dtype="float32").reshape(1, 2, 2, 1)
  y = resize_bilinear(tf.constant(x), tf.constant([3, 3]), "align_corners").numpy()[0, :, :, 0]
  # Corners keep their values and the centre is the mean of the four corners.
  assert_allclose(y[[0, 0, -1, -1], [0, -1, 0, -1]], [0, 1, 2, 3])
  assert_allclose(y[1, 1], 1.5)


def test_weight_decay_covers_kernels_only_with_reference_scale():
  unet = UNet(TINY_CHANNELS, convs_per_block=1, weight_decay=1e-5)
  unet.build((1, 16, 16, 1))
  kernels = [w for w in unet.trainable_weights if "kernel" in w.path]
  expected = 1e-5 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels) / 2
  got = float(tf.add_n(unet.losses))
  assert len(unet.losses) == len(kernels)
  assert got == pytest.approx(expected, rel=1e-5)


def test_fcomb_logits_conv_not_decayed_and_hidden_are():
  fcomb = FComb(3, latent_dim=6, channels=8, num_hidden=3, weight_decay=1e-5)
  fcomb.build((None, 4, 4, 5), (None, 6))
  assert len(fcomb.losses) == 3


def test_fcomb_equals_tiled_concat_and_convs():
  fcomb = FComb(3, latent_dim=6, channels=8, num_hidden=3)
  feats = np.random.rand(2, 5, 7, 4).astype("float32")
  z = np.random.randn(2, 6).astype("float32")
  fcomb.build(feats.shape, z.shape)
  got = fcomb(feats, z).numpy()
  # The paper's description: tile z, concatenate after the features, 1x1 convs.
  h = np.concatenate([feats, np.broadcast_to(z[:, None, None], (2, 5, 7, 6))], -1)
  for dense in fcomb.hidden:
    h = np.maximum(h @ dense.kernel.numpy() + dense.bias.numpy(), 0)
  want = h @ fcomb.logits.kernel.numpy() + fcomb.logits.bias.numpy()
  assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # M latents at once equal M separate calls.
  zs = np.random.randn(2, 5, 6).astype("float32")
  many = fcomb(feats, zs).numpy()
  assert many.shape == (2, 5, 5, 7, 3)
  for m in range(5):
    assert_allclose(many[:, m], fcomb(feats, zs[:, m]).numpy(), rtol=1e-5, atol=1e-5)
  clone = assert_config_round_trip(fcomb)
  clone.build(feats.shape, z.shape)
  clone.set_weights(fcomb.get_weights())
  assert_allclose(clone(feats, z), got)


def test_gaussian_head_returns_distribution_and_round_trips():
  head = AxisAlignedConvGaussian(6, TINY_CHANNELS, convs_per_block=1, log_sigma_bound=5.0)
  x = np.random.rand(3, 32, 32, 2).astype("float32")
  head.build(x.shape)
  dist = head(x)
  assert isinstance(dist, tfp.distributions.MultivariateNormalDiag)
  assert tuple(dist.batch_shape) == (3,) and tuple(dist.event_shape) == (6,)
  mu, log_sigma = head.params(x)
  assert_allclose(dist.mean(), mu)
  assert_allclose(dist.stddev(), np.exp(log_sigma))
  clone = assert_config_round_trip(head)
  clone.build(x.shape)
  clone.set_weights(head.get_weights())
  assert_allclose(clone(x).mean(), mu)


def test_log_sigma_bound():
  raw = tf.constant([-100.0, -1e-3, 0.0, 1e-3, 100.0])
  out = bound_log_sigma(raw, 5.0).numpy()
  assert np.all(np.abs(out) <= 5.0)  # saturates at the bound in float32
  assert_allclose(out[1:4], [-1e-3, 0.0, 1e-3], atol=1e-8)
  assert_allclose(bound_log_sigma(raw, 0.0), raw)
