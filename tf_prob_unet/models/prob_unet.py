"""The Probabilistic U-Net: a U-Net, prior and posterior nets, and f_comb (Kohl et al., 2018)."""

import keras
import tensorflow as tf

from tf_prob_unet import losses
from tf_prob_unet.layers import AxisAlignedConvGaussian, FComb, UNet
from tf_prob_unet.models import common

KL_ESTIMATES = ("analytic", "sampled")


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class ProbUNet(common.SegmentationModel):
  """The Probabilistic U-Net.

  Training reconstructs the label from one reparameterised sample of the posterior
  Q(z | X, Y); testing samples z from the prior P(z | X). The U-Net features, the prior and the
  feature half of f_comb's first 1x1 conv are computed once per image, whatever the number of
  samples; only the rest of f_comb runs per sample.

  Args:
    num_classes: number of classes K (2 for binary tasks such as LIDC).
    channels: U-Net / prior / posterior channels per level.
    convs_per_block: 3x3 convs per block.
    latent_dim: N (6 in the paper).
    fcomb_channels: f_comb hidden channels (None: `channels[0]`, as in the reference).
    num_fcomb_hidden: hidden 1x1 convs of f_comb (3 in the reference).
    beta: weight of the KL term (1 in the reference).
    kl_estimate: `"analytic"` (closed form, the reference) or `"sampled"`
      (`log q(z) - log p(z)` at the posterior sample).
    weight_decay: reference weight-decay coefficient (`weight_decay * sum(w^2) / 2` on kernels).
    log_sigma_bound: soft bound on |log sigma| of prior and posterior (see
      `layers.gaussian_head.bound_log_sigma`).
    ignore_index: label excluded from the loss.
    upsample_mode: `"align_corners"` (reference) or `"half_pixel"`.
    seed: base seed of the training-time posterior draws (each example's noise is a function
      of this seed, the optimizer step and its index in the global batch, so a resumed run and a
      run on any number of replicas draw the same noise).
  """

  per_example_seeds = True

  def __init__(self, num_classes=2, channels=(32, 64, 128, 192), convs_per_block=3,
               latent_dim=6, fcomb_channels=None, num_fcomb_hidden=3, beta=1.0,
               kl_estimate="analytic", weight_decay=1e-5, log_sigma_bound=5.0, ignore_index=255,
               upsample_mode="align_corners", seed=0, objective=None, **kwargs):
    super().__init__(num_classes=num_classes, ignore_index=ignore_index, seed=seed,
                     objective=objective, **kwargs)
    if kl_estimate not in KL_ESTIMATES:
      raise ValueError(f"ProbUNet: `kl_estimate` must be one of {KL_ESTIMATES}, "
                       f"found {kl_estimate!r}.")
    self.channels = tuple(int(c) for c in channels)
    self.convs_per_block = int(convs_per_block)
    self.latent_dim = int(latent_dim)
    self.fcomb_channels = None if fcomb_channels is None else int(fcomb_channels)
    self.num_fcomb_hidden = int(num_fcomb_hidden)
    self.beta = float(beta)
    self.kl_estimate = kl_estimate
    self.weight_decay = float(weight_decay)
    self.log_sigma_bound = float(log_sigma_bound)
    self.upsample_mode = upsample_mode
    self.unet = UNet(self.channels, self.convs_per_block, self.weight_decay,
                     upsample_mode=upsample_mode, name="unet")
    self.prior_net = AxisAlignedConvGaussian(
        self.latent_dim, self.channels, self.convs_per_block, self.weight_decay,
        self.log_sigma_bound, name="prior_net")
    self.posterior_net = AxisAlignedConvGaussian(
        self.latent_dim, self.channels, self.convs_per_block, self.weight_decay,
        self.log_sigma_bound, name="posterior_net")
    self.fcomb = FComb(self.num_classes, self.latent_dim,
                       self.fcomb_channels or self.channels[0], self.num_fcomb_hidden,
                       self.weight_decay, name="fcomb")
    self._init_trackers("loss", "rec_loss", "kl", "weight_decay_loss", "pixel_ce")

  def build(self, input_shape):
    """Builds every sublayer, the posterior too (which `call` never touches).

    Args:
      input_shape: image shape `[B, H, W, C]`.
    """
    input_shape = tuple(input_shape)
    self.unet.build(input_shape)
    self.prior_net.build(input_shape)
    self.posterior_net.build(input_shape[:3] + (input_shape[3] + self.num_classes,))
    self.fcomb.build(self.unet.compute_output_shape(input_shape), (input_shape[0], self.latent_dim))
    self.built = True

  # --- the latent distributions -------------------------------------------------------------

  def posterior_inputs(self, images, labels):
    """`[images, one_hot(labels) - 0.5]`, `[B, H, W, C + K]`; ignored pixels are -0.5 everywhere.

    The one-hot is aligned with the image pixel for pixel (the reference's NCHW reshape scrambles
    it; see the README's deviations).
    """
    return tf.concat([images, common.centred_one_hot(labels, self.num_classes, images.dtype)],
                     axis=-1)

  def prior(self, images, training=False):
    """P(z | X): a `tfd.MultivariateNormalDiag`, batch `[B]`, event `[N]`."""
    return self.prior_net(images, training=training)

  def posterior(self, images, labels, training=False):
    """Q(z | X, Y): a `tfd.MultivariateNormalDiag`, batch `[B]`, event `[N]`."""
    return self.posterior_net(self.posterior_inputs(images, labels), training=training)

  # --- inference ------------------------------------------------------------------------------

  def call(self, images, training=False):
    """The prior-mean prediction: logits `[B, H, W, K]` for z = mean of P(z | X)."""
    return self.predict_prior_mean(images, training=training)

  def predict_prior_mean(self, images, training=False):
    """Logits `[B, H, W, K]` with z set to the prior mean."""
    mu, _ = self.prior_net.params(images, training=training)
    return self.fcomb(self.unet(images, training=training), mu)

  def reconstruct(self, images, labels, seed=None, use_posterior_mean=False, training=False):
    """Logits `[B, H, W, K]` from a posterior sample (or its mean), as in training."""
    posterior = self.posterior(images, labels, training=training)
    if use_posterior_mean:
      z = posterior.mean()
    else:
      z = common.posterior_sample(posterior, seed)
    return self.fcomb(self.unet(images, training=training), z)

  def _prior_samples(self, images, num_samples, seed, labels_only):
    noise = common.normal_noise(
        tf.stack([tf.shape(images)[0], num_samples, self.latent_dim]), seed)
    return self.sample_from_noise(images, noise, labels_only=labels_only)

  def sample_from_noise(self, images, noise, labels_only=False, native=None):
    """Prior samples for given standard-normal noise: `z = mu + sigma * noise`.

    The deterministic core of `sample` (which draws the noise), for reproducible serving.

    Args:
      images: `[B, H, W, C]` float images.
      noise: `[B, M, N]` standard-normal draws.
      labels_only: return arg-max labels instead of logits.
      native: `FComb.combine`'s choice of the fused C++ kernel (None: where available;
        False: TensorFlow ops only, as exports need).

    Returns:
      Logits `[B, M, H, W, K]`, or `[B, M, H, W]` int32 labels with `labels_only`.
    """
    features = self.unet(images, training=False)
    mu, log_sigma = self.prior_net.params(images, training=False)
    z = mu[:, tf.newaxis] + tf.exp(log_sigma)[:, tf.newaxis] * tf.cast(noise, mu.dtype)
    return self.fcomb.combine(self.fcomb.project_features(features), z, labels_only=labels_only,
                              native=native)

  def sample_logits(self, images, num_samples=1, seed=None):
    """Logits of `num_samples` prior samples per image, `[B, M, H, W, K]`.

    The U-Net, the prior net and f_comb's feature projection run once per image; the latent
    draws go through the rest of f_comb in one batched call.
    """
    return self._prior_samples(images, num_samples, seed, labels_only=False)

  def sample_labels(self, images, num_samples=1, seed=None):
    """Like `sample_logits`, arg-maxed chunk by chunk: `[B, M, H, W]` int32 (the same draws)."""
    return self._prior_samples(images, num_samples, seed, labels_only=True)

  # --- training -------------------------------------------------------------------------------

  def loss_terms(self, images, labels, seed, training=True):
    """The ELBO terms of one (per-replica) batch, each averaged over the batch.

    Args:
      images: `[B, H, W, C]` float.
      labels: `[B, H, W]` int, values in `[0, K)` or `ignore_index`.
      seed: `[2]` int seed of the posterior draw, or `[B, 2]` per-example seeds.
      training: forwarded to the layers.

    Returns:
      A dict of scalars: `rec_loss` (CE summed over valid pixels, mean over images), `kl`
      (KL(Q||P), mean over images), `weight_decay_loss`, `loss` (`rec + beta * kl + wd`) and
      `pixel_ce` (mean CE per valid pixel, for logging).
    """
    features = self.unet(images, training=training)
    prior = self.prior(images, training=training)
    posterior = self.posterior(images, labels, training=training)
    z = common.posterior_sample(posterior, seed)
    logits = self.fcomb(features, z)
    kl = losses.kl_divergence(posterior, prior, z if self.kl_estimate == "sampled" else None)
    return self.elbo_terms(logits, labels, kl, self.beta)

  def get_config(self):
    config = super().get_config()
    config.update(channels=list(self.channels), convs_per_block=self.convs_per_block,
                  latent_dim=self.latent_dim, fcomb_channels=self.fcomb_channels,
                  num_fcomb_hidden=self.num_fcomb_hidden, beta=self.beta,
                  kl_estimate=self.kl_estimate, weight_decay=self.weight_decay,
                  log_sigma_bound=self.log_sigma_bound, upsample_mode=self.upsample_mode)
    return config
