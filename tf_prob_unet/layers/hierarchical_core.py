"""The HPU-Net's hierarchical core (prior or posterior) and its stitching decoder."""

import keras
import tensorflow as tf

from tf_prob_unet.layers.gaussian_head import bound_log_sigma
from tf_prob_unet.layers.res_block import ResBlock, downsample, orthogonal_conv, upsample


def _check_levels(channels, latent_dims, owner):
  if not channels:
    raise ValueError(f"{owner}: `channels` must list at least two levels, found ().")
  if not 1 <= len(latent_dims) <= len(channels) - 1:
    raise ValueError(f"{owner}: expected 1 to len(channels) - 1 = {len(channels) - 1} latent "
                     f"scales, found {len(latent_dims)} (latent_dims={list(latent_dims)}).")
  if min(latent_dims) < 1:
    raise ValueError(f"{owner}: `latent_dims` must be positive, found {list(latent_dims)}.")


def _blocks(filters, count, convs_per_block, weight_decay, prefix, input_shape):
  """`count` residual blocks to `filters` channels, built for `input_shape`."""
  blocks = []
  shape = tuple(input_shape)
  for j in range(count):
    block = ResBlock(filters, num_convs=convs_per_block, weight_decay=weight_decay,
                     name=f"{prefix}_{j}")
    block.build(shape)
    shape = block.compute_output_shape(shape)
    blocks.append(block)
  return blocks


def _run(blocks, x, training):
  for block in blocks:
    x = block(x, training=training)
  return x


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class HierarchicalCore(keras.layers.Layer):
  """The release's `_HierarchicalCore`: an encoder and a truncated decoder with latent scales.

  The encoder runs `blocks_per_level` residual blocks per level, keeps each level's output and
  average-pools between levels, down to `H / 2^(L-1)` (1x1 for 128x128 and L = 8). The truncated
  decoder starts at the bottleneck; at latent scale i a 1x1 convolution gives the per-pixel mean
  and log-sigma of a diagonal Gaussian over `latent_dims[i]` channels, `z_i` is drawn (or taken
  as the mean, or given), and `concat([z_i, features])` is upsampled x2, concatenated with the
  encoder's skip and passed through the level's blocks. Scale i is at `2^i` times the bottleneck
  resolution.

  Args:
    channels: channels per level, finest first (L levels; the release's LIDC setting 24, 48, 96,
      192, 192, 192, 192, 192).
    latent_dims: latent channels of each scale, coarsest first (1, 1, 1, 1 in the release).
    blocks_per_level: residual blocks per level (3).
    convs_per_block: 3x3 convolutions per residual block (3).
    weight_decay: coefficient of `sum(w ** 2) / 2` over kernels and biases.
    log_sigma_bound: soft bound on |log sigma| (`gaussian_head.bound_log_sigma`; the release has
      none; 0 disables it).
    stop_at_last_latent: stop after the last scale's distribution (the posterior: the blocks the
      release runs after it feed nothing and get no gradient, so they are not built).

  Call arguments:
    inputs: `[B, H, W, C]`, H and W multiples of `2^(L-1)`.
    noise: optional list of `[B, h_i, w_i, latent_dims[i]]` standard-normal draws, one per scale:
      `z_i = mu_i + sigma_i * noise_i`.
    latents: optional list of given `z_i` (teacher forcing); overrides noise and means.
    mean_levels: optional list of bools, one per scale: `z_i = mu_i` where True.
    training: forwarded to the convolutions.

  Returns:
    A dict: `encoder_features` (a list, finest first), `features` (the decoder output,
    `[B, H / 2^(L-1-n), ..., channels[L-1-n]]` for n scales; None with `stop_at_last_latent`),
    and per scale (lists, coarsest first) `mu`, `log_sigma` and `z`, each
    `[B, h_i, w_i, latent_dims[i]]`. A scale without noise, latents or a mean flag uses its mean.
  """

  def __init__(self, channels=(24, 48, 96, 192, 192, 192, 192, 192), latent_dims=(1, 1, 1, 1),
               blocks_per_level=3, convs_per_block=3, weight_decay=2e-5, log_sigma_bound=5.0,
               stop_at_last_latent=False, **kwargs):
    super().__init__(**kwargs)
    self.channels = tuple(int(c) for c in channels)
    self.latent_dims = tuple(int(d) for d in latent_dims)
    _check_levels(self.channels, self.latent_dims, "HierarchicalCore")
    self.blocks_per_level = int(blocks_per_level)
    self.convs_per_block = int(convs_per_block)
    self.weight_decay = float(weight_decay)
    self.log_sigma_bound = float(log_sigma_bound)
    self.stop_at_last_latent = bool(stop_at_last_latent)

  @property
  def num_scales(self):
    return len(self.latent_dims)

  def build(self, input_shape):
    shape = tuple(input_shape)
    factor = 2 ** (len(self.channels) - 1)
    for size in shape[1:3]:
      if size is not None and size % factor:
        raise ValueError(f"HierarchicalCore: image height and width must be multiples of "
                         f"2^(levels - 1) = {factor} for {len(self.channels)} levels, found "
                         f"{shape[1]}x{shape[2]}.")
    self.encoder_blocks = []
    for level, filters in enumerate(self.channels):
      blocks = _blocks(filters, self.blocks_per_level, self.convs_per_block, self.weight_decay,
                       f"encoder_{level}", (None, None, None, shape[-1]))
      shape = (None, None, None, filters)
      self.encoder_blocks.append(blocks)
    reverse = self.channels[::-1]
    self.heads, self.decoder_blocks = [], []
    features = reverse[0]
    for i, dims in enumerate(self.latent_dims):
      # The release's 1x1 convs: orthogonal kernels, decayed kernels and biases.
      head = orthogonal_conv(2 * dims, 1, self.weight_decay, f"mu_log_sigma_{i}")
      head.build((None, None, None, features))
      self.heads.append(head)
      if self.stop_at_last_latent and i == self.num_scales - 1:
        break
      in_channels = dims + features + reverse[i + 1]
      self.decoder_blocks.append(_blocks(reverse[i + 1], self.blocks_per_level,
                                         self.convs_per_block, self.weight_decay,
                                         f"decoder_{i}", (None, None, None, in_channels)))
      features = reverse[i + 1]

  def encode(self, inputs, training=False):
    """Every level's features, finest first: `[B, H / 2^l, W / 2^l, channels[l]]`."""
    features = []
    x = inputs
    for level, blocks in enumerate(self.encoder_blocks):
      if level:
        x = downsample(x)
      x = _run(blocks, x, training)
      features.append(x)
    return features

  def decode(self, encoder_features, noise=None, latents=None, mean_levels=None,
             training=False):
    """The truncated decoder over `encode`'s output (arguments and result as for `call`, without
    `encoder_features`)."""
    skips = encoder_features[::-1]
    x = skips[0]
    out = {"mu": [], "log_sigma": [], "z": [], "features": None}
    for i in range(self.num_scales):
      params = self.heads[i](x, training=training)
      dims = self.latent_dims[i]
      mu, log_sigma = params[..., :dims], bound_log_sigma(params[..., dims:],
                                                          self.log_sigma_bound)
      if latents is not None:
        z = tf.cast(latents[i], mu.dtype)
      elif (mean_levels is not None and mean_levels[i]) or noise is None:
        z = mu
      else:
        z = mu + tf.exp(log_sigma) * tf.cast(noise[i], mu.dtype)
      out["mu"].append(mu)
      out["log_sigma"].append(log_sigma)
      out["z"].append(z)
      if i == len(self.decoder_blocks):  # stopped at the last latent scale
        break
      x = tf.concat([upsample(tf.concat([z, x], axis=-1)), skips[i + 1]], axis=-1)
      x = _run(self.decoder_blocks[i], x, training)
    if len(self.decoder_blocks) == self.num_scales:
      out["features"] = x
    return out

  def call(self, inputs, noise=None, latents=None, mean_levels=None, training=False):
    encoder_features = self.encode(inputs, training=training)
    out = self.decode(encoder_features, noise, latents, mean_levels, training=training)
    out["encoder_features"] = encoder_features
    return out

  def get_config(self):
    config = super().get_config()
    config.update(channels=list(self.channels), latent_dims=list(self.latent_dims),
                  blocks_per_level=self.blocks_per_level, convs_per_block=self.convs_per_block,
                  weight_decay=self.weight_decay, log_sigma_bound=self.log_sigma_bound,
                  stop_at_last_latent=self.stop_at_last_latent)
    return config


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class StitchingDecoder(keras.layers.Layer):
  """The release's `_StitchingDecoder` (f_comb): the rest of the up path, then 1x1 logits.

  From the core's decoder output (after n latent scales, at level `L-1-n`), each remaining level
  upsamples x2, concatenates the encoder's skip and runs `blocks_per_level` residual blocks; a
  1x1 convolution gives the logits at full resolution.

  Args:
    num_classes: logits channels K.
    channels: channels per level, finest first (the core's).
    num_scales: latent scales n of the core.
    blocks_per_level, convs_per_block, weight_decay: as for `HierarchicalCore`.

  Call arguments:
    features: the core's `features`.
    encoder_features: the core's `encoder_features` (finest first).

  Returns:
    Logits `[B, H, W, K]`.
  """

  def __init__(self, num_classes=2, channels=(24, 48, 96, 192, 192, 192, 192, 192),
               num_scales=4, blocks_per_level=3, convs_per_block=3, weight_decay=2e-5,
               **kwargs):
    super().__init__(**kwargs)
    self.num_classes = int(num_classes)
    self.channels = tuple(int(c) for c in channels)
    self.num_scales = int(num_scales)
    _check_levels(self.channels, (1,) * self.num_scales, "StitchingDecoder")
    self.blocks_per_level = int(blocks_per_level)
    self.convs_per_block = int(convs_per_block)
    self.weight_decay = float(weight_decay)

  def build(self, features_shape, encoder_shapes=None):
    reverse = self.channels[::-1]
    self.levels = []
    features = reverse[self.num_scales]
    for level in range(self.num_scales + 1, len(self.channels)):
      in_channels = features + reverse[level]
      self.levels.append(_blocks(reverse[level], self.blocks_per_level, self.convs_per_block,
                                 self.weight_decay, f"level_{level}",
                                 (None, None, None, in_channels)))
      features = reverse[level]
    self.logits = orthogonal_conv(self.num_classes, 1, self.weight_decay, "logits")
    self.logits.build((None, None, None, features))

  def call(self, features, encoder_features, training=False):
    skips = encoder_features[::-1]
    x = features
    for blocks, level in zip(self.levels, range(self.num_scales + 1, len(self.channels))):
      x = _run(blocks, tf.concat([upsample(x), skips[level]], axis=-1), training)
    return self.logits(x, training=training)

  def compute_output_shape(self, features_shape, encoder_shapes=None):
    return (features_shape[0], None, None, self.num_classes)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, channels=list(self.channels),
                  num_scales=self.num_scales, blocks_per_level=self.blocks_per_level,
                  convs_per_block=self.convs_per_block, weight_decay=self.weight_decay)
    return config
