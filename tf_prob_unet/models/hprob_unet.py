"""The Hierarchical Probabilistic U-Net (Kohl et al., 2019): the official architecture in Keras 3."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_prob_unet.layers.hierarchical_core import HierarchicalCore, StitchingDecoder
from tf_prob_unet.models import common

tfd = tfp.distributions

LIDC_CHANNELS = (24, 48, 96, 192, 192, 192, 192, 192)


def _distribution(mu, log_sigma):
  """Per-pixel `tfd.MultivariateNormalDiag`: batch `[B, h, w]`, event `[d]`."""
  return tfd.MultivariateNormalDiag(loc=mu, scale_diag=tf.exp(log_sigma))


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class HierarchicalProbUNet(common.SegmentationModel):
  """The Hierarchical Probabilistic U-Net (HPU-Net) of the official release.

  The prior P(z | X) and the posterior Q(z | X, Y) are `HierarchicalCore`s; the prior core is
  also the generator: its decoder, with latents at every scale, continues through the shared
  `StitchingDecoder` to the logits. The posterior sees `concat([one_hot(Y), X])` (one-hot first,
  no -0.5 shift, as in the release; ignored pixels are all-zero) and stops at its last latent
  scale. Training uses teacher forcing: the prior's scale i is conditioned on the posterior's
  z_<i, and the reconstruction is the prior core with the posterior's latents. The KL of each
  scale is summed over its pixels and averaged over the batch; `kl` is their plain sum.

  The constructor defaults are the release's LIDC-IDRI settings (128x128 inputs).

  Args:
    num_classes: number of classes K.
    channels: channels per level, finest first (L = len(channels) levels; inputs must be
      multiples of `2^(L-1)`).
    blocks_per_level: residual blocks per level (encoders, truncated decoders and stitching).
    convs_per_block: 3x3 convolutions per residual block.
    latent_dims: latent channels per scale, coarsest first; scale i sits at `2^i` times the
      bottleneck resolution (1x1, 2x2, 4x4, 8x8 at 128x128 with the defaults).
    beta: weight of the KL in the ELBO.
    weight_decay: `weight_decay * sum(w ** 2) / 2` over kernels and biases (2e-5 is the release's
      `l2(1e-5)`; the release registers it but never adds it to the loss, here it is added).
    log_sigma_bound: soft bound on |log sigma| of every scale (the release has none; 0: none).
    ignore_index: label excluded from the loss.
    seed: base seed of the training-time posterior draws (per example, as for `ProbUNet`).
    objective: the training objective (`objectives.normalize`: None / `"elbo"` or GECO, e.g.
      `"geco"` or `{"name": "geco", "kappa": 0.05}`, the release's objective); GECO weighs the
      summed KL by 1 and ignores `beta`.
  """

  per_example_seeds = True

  def __init__(self, num_classes=2, channels=LIDC_CHANNELS, blocks_per_level=3,
               convs_per_block=3, latent_dims=(1, 1, 1, 1), beta=1.0, weight_decay=2e-5,
               log_sigma_bound=5.0, ignore_index=255, seed=0, objective=None, **kwargs):
    super().__init__(num_classes=num_classes, ignore_index=ignore_index, seed=seed,
                     objective=objective, **kwargs)
    self.channels = tuple(int(c) for c in channels)
    self.blocks_per_level = int(blocks_per_level)
    self.convs_per_block = int(convs_per_block)
    self.latent_dims = tuple(int(d) for d in latent_dims)
    self.beta = float(beta)
    self.weight_decay = float(weight_decay)
    self.log_sigma_bound = float(log_sigma_bound)
    core = dict(channels=self.channels, latent_dims=self.latent_dims,
                blocks_per_level=self.blocks_per_level, convs_per_block=self.convs_per_block,
                weight_decay=self.weight_decay, log_sigma_bound=self.log_sigma_bound)
    self.prior_net = HierarchicalCore(**core, name="prior_net")
    self.posterior_net = HierarchicalCore(**core, stop_at_last_latent=True,
                                          name="posterior_net")
    self.stitching_decoder = StitchingDecoder(
        self.num_classes, self.channels, len(self.latent_dims), self.blocks_per_level,
        self.convs_per_block, self.weight_decay, name="stitching_decoder")
    self._init_trackers("loss", "rec_loss", "kl", "weight_decay_loss", "pixel_ce",
                        *[f"kl_{i}" for i in range(self.num_scales)])

  @property
  def num_scales(self):
    return len(self.latent_dims)

  def build(self, input_shape):
    """Builds the prior, the posterior and the stitching decoder for images `[B, H, W, C]`."""
    input_shape = tuple(input_shape)
    self.prior_net.build(input_shape)
    self.posterior_net.build(input_shape[:3] + (input_shape[3] + self.num_classes,))
    self.stitching_decoder.build((None, None, None, self.channels[::-1][self.num_scales]))
    self.built = True

  # --- latent layout --------------------------------------------------------------------------

  def latent_shapes(self, height, width):
    """`[(h_i, w_i, d_i)]` of the latent scales for `height x width` images (ints or scalar
    tensors)."""
    factor = 2 ** (len(self.channels) - 1)
    return [(height // factor * 2 ** i, width // factor * 2 ** i, d)
            for i, d in enumerate(self.latent_dims)]

  def noise_dim(self, height, width):
    """The number of standard-normal draws per sample: every scale's `h_i * w_i * d_i` (85 for
    the LIDC setting at 128x128)."""
    return sum(h * w * d for h, w, d in self.latent_shapes(height, width))

  def split_noise(self, noise, height, width):
    """Flat noise `[N, noise_dim]` -> one `[N, h_i, w_i, d_i]` tensor per scale.

    The layout of the flat vector (of `sample_with_noise` and the exports): scale 0 (coarsest)
    first, each scale's `[h, w, d]` block in row-major order.
    """
    shapes = self.latent_shapes(height, width)
    sizes = [h * w * d for h, w, d in shapes]
    parts, start = [], 0
    for (h, w, d), size in zip(shapes, sizes):
      block = noise[:, start:start + size]
      parts.append(tf.reshape(block, tf.stack([-1, h, w, d])))
      start = start + size
    return parts

  # --- the latent distributions -------------------------------------------------------------

  def posterior_inputs(self, images, labels):
    """`concat([one_hot(labels), images])`, `[B, H, W, K + C]` (the release's order, no shift);
    ignored pixels have an all-zero one-hot."""
    one_hot = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=images.dtype)
    return tf.concat([one_hot, images], axis=-1)

  def posterior(self, images, labels, noise=None, mean=False, training=False):
    """The posterior core's output (see `HierarchicalCore`): per scale `mu`, `log_sigma`, `z`.

    Args:
      noise: per-scale standard-normal draws (None: the means).
      mean: take every scale's mean.
    """
    levels = [True] * self.num_scales if mean else None
    return self.posterior_net(self.posterior_inputs(images, labels), noise=noise,
                              mean_levels=levels, training=training)

  def prior(self, images, noise=None, latents=None, mean_levels=None, training=False):
    """The prior core's output (see `HierarchicalCore`); `latents` teacher-forces z."""
    return self.prior_net(images, noise=noise, latents=latents, mean_levels=mean_levels,
                          training=training)

  def kl_per_scale(self, posterior, prior):
    """`[B]` KL(Q_i || P_i) of every scale, summed over its pixels (a list, coarsest first)."""
    return [tf.reduce_sum(tfd.kl_divergence(_distribution(mq, lq), _distribution(mp, lp)),
                          axis=[1, 2])
            for mq, lq, mp, lp in zip(posterior["mu"], posterior["log_sigma"], prior["mu"],
                                      prior["log_sigma"])]

  def _noise(self, images, seed, num_samples=None):
    """Flat noise `[B, noise_dim]` (`[B, M, noise_dim]` with `num_samples`) from a seed (see
    `common.normal_noise`; `[B, 2]` seeds give each example its own draws)."""
    shape = tf.shape(images)
    dim = self.noise_dim(shape[1], shape[2])
    if num_samples is None:
      return common.normal_noise(tf.stack([shape[0], dim]), seed)
    return common.normal_noise(tf.stack([shape[0], num_samples, dim]), seed)

  # --- inference ------------------------------------------------------------------------------

  def call(self, images, training=False):
    """The prior-mean prediction: logits `[B, H, W, K]` with z the prior mean at every scale."""
    return self.predict_prior_mean(images, training=training)

  def predict_prior_mean(self, images, training=False):
    """Logits `[B, H, W, K]` with every scale's z set to the prior's mean."""
    prior = self.prior(images, mean_levels=[True] * self.num_scales, training=training)
    return self.stitching_decoder(prior["features"], prior["encoder_features"],
                                  training=training)

  def reconstruct(self, images, labels, seed=None, use_posterior_mean=False, training=False):
    """Logits `[B, H, W, K]` of the prior core and stitching decoder fed the posterior's latents
    (a sample, or the means), as in training."""
    shape = tf.shape(images)
    noise = None if use_posterior_mean else self.split_noise(
        self._noise(images, seed), shape[1], shape[2])
    posterior = self.posterior(images, labels, noise=noise, mean=use_posterior_mean,
                               training=training)
    prior = self.prior(images, latents=posterior["z"], training=training)
    return self.stitching_decoder(prior["features"], prior["encoder_features"],
                                  training=training)

  def sample_from_noise(self, images, noise, labels_only=False, native=None, mean_levels=None,
                        batched=False):
    """Prior samples for given flat standard-normal noise (see `split_noise` for the layout).

    The encoder runs once per image. The truncated and stitching decoders run once per sample:
    a loop over the M samples, each step decoding sample m of every image of the batch as one
    batch. (One batch of all `B * M` samples was measured 2.6x slower at 128x128 on a 2-core
    CPU, 16 samples of one image: its `[B * M, 128, 128, C]` activations leave the cache; the
    loop also bounds the memory to one sample per image.)

    Args:
      images: `[B, H, W, C]` float images.
      noise: `[B, M, noise_dim(H, W)]` standard-normal draws.
      labels_only: return arg-max labels instead of logits.
      native: unused (the HPU-Net has no native kernel); the `ProbUNet` contract.
      mean_levels: optional list of bools, one per scale: the prior mean instead of a sample at
        those scales (`[1, 1, 1, 0]`: "local only", `[0, 1, 1, 1]`: "global only").
      batched: decode all `B * M` samples as one batch instead of the loop (the exports: a
        graph without a loop converts to TFLite's built-in ops). The same arithmetic.

    Returns:
      Logits `[B, M, H, W, K]`, or `[B, M, H, W]` int32 labels with `labels_only`.
    """
    del native
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    encoder_features = self.prior_net.encode(images, training=False)
    noise = tf.cast(noise, images.dtype)

    def one(noise_m, features=encoder_features):  # [N, D] -> [N, H, W(, K)]
      prior = self.prior_net.decode(features, self.split_noise(noise_m, height, width),
                                    mean_levels=mean_levels, training=False)
      logits = self.stitching_decoder(prior["features"], features, training=False)
      return tf.argmax(logits, axis=-1, output_type=tf.int32) if labels_only else logits

    if batched:
      batch, num = shape[0], tf.shape(noise)[1]
      out = one(tf.reshape(noise, tf.stack([batch * num, -1])),
                [tf.repeat(f, num, axis=0) for f in encoder_features])
      return tf.reshape(out, tf.concat([tf.stack([batch, num]), tf.shape(out)[1:]], axis=0))
    if noise.shape[1] == 1:
      return one(noise[:, 0])[:, tf.newaxis]
    out = tf.map_fn(one, tf.transpose(noise, [1, 0, 2]),
                    fn_output_signature=tf.int32 if labels_only else images.dtype,
                    parallel_iterations=1)
    return tf.transpose(out, [1, 0, 2, 3] + ([] if labels_only else [4]))

  def _check_mean_levels(self, mean_levels):
    if mean_levels is not None and len(mean_levels) != self.num_scales:
      raise ValueError(f"HierarchicalProbUNet.sample: mean_levels: expected one flag per latent "
                       f"scale ({self.num_scales}), found {list(mean_levels)}.")
    return None if mean_levels is None else [bool(v) for v in mean_levels]

  def sample_logits(self, images, num_samples=1, seed=None, mean_levels=None):
    """Logits of `num_samples` prior samples per image, `[B, M, H, W, K]`."""
    mean_levels = self._check_mean_levels(mean_levels)
    return self.sample_from_noise(images, self._noise(images, seed, num_samples),
                                  mean_levels=mean_levels)

  def sample_labels(self, images, num_samples=1, seed=None, mean_levels=None):
    """`[B, M, H, W]` int32 labels of the same draws as `sample_logits`."""
    mean_levels = self._check_mean_levels(mean_levels)
    return self.sample_from_noise(images, self._noise(images, seed, num_samples),
                                  labels_only=True, mean_levels=mean_levels)

  def sample(self, images, num_samples=1, seed=None, mean_levels=None, return_logits=False,
             return_probs=False):
    """Draws `num_samples` segmentations per image (`SegmentationModel.sample`'s contract).

    Args:
      images: `[B, H, W, C]` float images.
      num_samples: M.
      seed: None, an int or a `[2]` int tensor.
      mean_levels: optional list of bools, one per latent scale: the prior mean there instead of
        a sample (the release's `mean` argument).
      return_logits, return_probs: also return `[B, M, H, W, K]` logits / probabilities.

    Returns:
      `[B, M, H, W]` int32 labels, or a tuple with the logits / probabilities.
    """
    if not (return_logits or return_probs):
      return self.sample_labels(images, num_samples, seed, mean_levels)
    logits = self.sample_logits(images, num_samples, seed, mean_levels)
    out = (tf.argmax(logits, axis=-1, output_type=tf.int32),)
    if return_logits:
      out += (logits,)
    if return_probs:
      out += (tf.nn.softmax(logits, axis=-1),)
    return out

  # --- training -------------------------------------------------------------------------------

  def loss_terms(self, images, labels, seed, training=True):
    """The loss terms of one (per-replica) batch under the model's objective, batch-averaged.

    Args:
      images: `[B, H, W, C]` float.
      labels: `[B, H, W]` int, values in `[0, K)` or `ignore_index`.
      seed: `[2]` seed of the posterior draws, or `[B, 2]` per-example seeds.
      training: forwarded to the layers.

    Returns:
      A dict of scalars: `rec_loss`, `kl` (the sum over scales), `kl_0` ... (each scale's KL,
      summed over its pixels), `weight_decay_loss`, `loss` (ELBO: `rec + beta * kl + wd`; GECO:
      `lambda * C + kl + wd`), `pixel_ce`; GECO adds its terms (`common.elbo_terms`).
    """
    shape = tf.shape(images)
    noise = self.split_noise(self._noise(images, seed), shape[1], shape[2])
    posterior = self.posterior(images, labels, noise=noise, training=training)
    prior = self.prior(images, latents=posterior["z"], training=training)
    logits = self.stitching_decoder(prior["features"], prior["encoder_features"],
                                    training=training)
    kls = self.kl_per_scale(posterior, prior)
    terms = self.elbo_terms(logits, labels, tf.add_n(kls), self.beta)
    terms.update({f"kl_{i}": tf.reduce_mean(kl) for i, kl in enumerate(kls)})
    return terms

  def get_config(self):
    config = super().get_config()
    config.update(channels=list(self.channels), blocks_per_level=self.blocks_per_level,
                  convs_per_block=self.convs_per_block, latent_dims=list(self.latent_dims),
                  beta=self.beta, weight_decay=self.weight_decay,
                  log_sigma_bound=self.log_sigma_bound)
    return config
