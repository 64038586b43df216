"""The Image2Image VAE baseline: a fixed N(0, I) prior and z fed into the U-Net's encoder path."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_prob_unet import losses
from tf_prob_unet.layers import AxisAlignedConvGaussian, SegmentationHeads, UNet
from tf_prob_unet.models import common

tfd = tfp.distributions


@keras.saving.register_keras_serializable(package="tf_prob_unet")
class Image2ImageVAE(common.SegmentationModel):
  """A conditional VAE in the style of BicycleGAN's cVAE-GAN, trained with CE only.

  - Prior: a fixed standard normal N(0, I) in N dimensions, the same for every image.
  - Posterior Q(z | Y): an encoder (the prior/posterior net of the Probabilistic U-Net) that sees
    only the segmentation, as `one_hot(Y) - 0.5`.
  - Decoder: z is broadcast over H x W and concatenated to the image, `[image, tile(z)]`, which
    enters the U-Net's encoder path; the U-Net features go through the classifier head.
  - Loss: CE summed over valid pixels, mean over images, plus `beta * KL(Q || N(0, I))` and
    weight decay.
  - Sampling: z ~ N(0, I), one whole U-Net pass per sample; `call` decodes z = 0 (the prior mean).

  Args: those of `DeterministicUNet`, plus
    latent_dim: N.
    beta: weight of the KL term.
    log_sigma_bound: soft bound on the posterior's |log sigma|.
  """

  def __init__(self, num_classes=2, channels=(32, 64, 128, 192), convs_per_block=3,
               latent_dim=6, head_channels=None, num_head_hidden=3, beta=1.0, weight_decay=1e-5,
               log_sigma_bound=5.0, ignore_index=255, upsample_mode="align_corners", seed=0,
               objective=None, **kwargs):
    super().__init__(num_classes=num_classes, ignore_index=ignore_index, seed=seed,
                     objective=objective, **kwargs)
    self.channels = tuple(int(c) for c in channels)
    self.convs_per_block = int(convs_per_block)
    self.latent_dim = int(latent_dim)
    self.head_channels = None if head_channels is None else int(head_channels)
    self.num_head_hidden = int(num_head_hidden)
    self.beta = float(beta)
    self.weight_decay = float(weight_decay)
    self.log_sigma_bound = float(log_sigma_bound)
    self.upsample_mode = upsample_mode
    self.unet = UNet(self.channels, self.convs_per_block, self.weight_decay,
                     upsample_mode=upsample_mode, name="unet")
    self.posterior_net = AxisAlignedConvGaussian(
        self.latent_dim, self.channels, self.convs_per_block, self.weight_decay,
        self.log_sigma_bound, name="posterior_net")
    self.heads = SegmentationHeads(self.num_classes, self.head_channels or self.channels[0],
                                   self.num_head_hidden, 1, self.weight_decay, name="heads")
    self._init_trackers("loss", "rec_loss", "kl", "weight_decay_loss", "pixel_ce")

  def build(self, input_shape):
    """Builds the U-Net for `[image, z]` inputs, the posterior net and the head.

    Args:
      input_shape: image shape `[B, H, W, C]`.
    """
    input_shape = tuple(input_shape)
    unet_input = input_shape[:3] + (input_shape[3] + self.latent_dim,)
    self.unet.build(unet_input)
    self.posterior_net.build(input_shape[:3] + (self.num_classes,))
    self.heads.build(self.unet.compute_output_shape(unet_input))
    self.built = True

  def prior(self, images):
    """P(z) = N(0, I): a `tfd.MultivariateNormalDiag`, batch `[B]`, event `[N]`; `images` only
    sets the batch size (and dtype)."""
    zeros = tf.zeros(tf.stack([tf.shape(images)[0], self.latent_dim]), images.dtype)
    return tfd.MultivariateNormalDiag(loc=zeros, scale_diag=tf.ones_like(zeros))

  def posterior(self, labels, training=False):
    """Q(z | Y): a `tfd.MultivariateNormalDiag`, batch `[B]`, event `[N]`, from the labels only."""
    return self.posterior_net(common.centred_one_hot(labels, self.num_classes),
                              training=training)

  def decode(self, images, z, training=False):
    """Logits `[B, H, W, K]` for images `[B, H, W, C]` and latents `z` `[B, N]`."""
    shape = tf.shape(images)
    tiled = tf.broadcast_to(tf.cast(z, images.dtype)[:, tf.newaxis, tf.newaxis, :],
                            tf.stack([shape[0], shape[1], shape[2], self.latent_dim]))
    features = self.unet(tf.concat([images, tiled], axis=-1), training=training)
    return self.heads(features)[:, 0]

  def call(self, images, training=False):
    """The prior-mean prediction: logits `[B, H, W, K]` for z = 0."""
    return self.decode(images, tf.zeros(tf.stack([tf.shape(images)[0], self.latent_dim])),
                       training=training)

  def sample_logits(self, images, num_samples=1, seed=None):
    """Logits of `num_samples` prior draws per image, `[B, M, H, W, K]` (one U-Net pass each)."""
    batch = tf.shape(images)[0]
    z = common.normal_noise(tf.stack([batch * num_samples, self.latent_dim]), seed)
    logits = self.decode(tf.repeat(images, num_samples, axis=0), z)
    return tf.reshape(logits, tf.concat([[batch, num_samples], tf.shape(logits)[1:]], 0))

  def loss_terms(self, images, labels, seed, training=True):
    """The ELBO terms of one (per-replica) batch, each averaged over the batch.

    Returns:
      A dict of scalars: `rec_loss` (CE summed over valid pixels, mean over images), `kl`
      (KL(Q || N(0, I)), mean over images), `weight_decay_loss`, `loss`
      (`rec + beta * kl + wd`) and `pixel_ce`.
    """
    posterior = self.posterior(labels, training=training)
    z = common.posterior_sample(posterior, seed)
    logits = self.decode(images, z, training=training)
    return self.elbo_terms(logits, labels, losses.kl_divergence(posterior, self.prior(images)),
                           self.beta)

  def get_config(self):
    config = super().get_config()
    config.update(channels=list(self.channels), convs_per_block=self.convs_per_block,
                  latent_dim=self.latent_dim, head_channels=self.head_channels,
                  num_head_hidden=self.num_head_hidden, beta=self.beta,
                  weight_decay=self.weight_decay, log_sigma_bound=self.log_sigma_bound,
                  upsample_mode=self.upsample_mode)
    return config
