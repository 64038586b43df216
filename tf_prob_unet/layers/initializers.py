"""Initialisers and regularisers shared by every layer (reference implementation, REFERENCE.md 1.3)."""

import keras


def kernel_initializer():
  """He-normal (variance scaling 2, fan-in, truncated normal), as in the reference."""
  return keras.initializers.HeNormal()


def bias_initializer():
  """Truncated normal with standard deviation 1e-3, as in the reference."""
  return keras.initializers.TruncatedNormal(stddev=1e-3)


def kernel_regularizer(weight_decay):
  """Weight decay `weight_decay * sum(w ** 2) / 2`, the reference's form, as a Keras L2.

  Keras' L2(l) adds `l * sum(w ** 2)`, so the reference's 1e-5 * sum(w^2) / 2 is L2(5e-6).

  Args:
    weight_decay: the reference's coefficient (1e-5 there). 0 or None disables it.

  Returns:
    A `keras.regularizers.L2` or None.
  """
  if not weight_decay:
    return None
  return keras.regularizers.L2(weight_decay / 2.0)


def dense(units, weight_decay=0.0, activation=None, name=None):
  """A 1x1 convolution as a `keras.layers.Dense` with the reference's initialisers.

  Args:
    units: output channels.
    weight_decay: reference weight-decay coefficient of the kernel (0: none, as for the final
      logits convs).
    activation: Keras activation (None: linear).
    name: layer name.
  """
  return keras.layers.Dense(units, activation=activation, kernel_initializer=kernel_initializer(),
                            bias_initializer=bias_initializer(),
                            kernel_regularizer=kernel_regularizer(weight_decay), name=name)
