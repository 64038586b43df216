"""`python -m tf_prob_unet.native`: builds the native kernels now (else on first use)."""

import sys

from tf_prob_unet import native


def main():
  if not native.enabled():
    print("native kernels: off (TF_PROB_UNET_NATIVE=0)")
    return 0
  for source in native.SOURCES:
    try:
      print(native.build(source))
    except RuntimeError as e:
      print(f"{e}\nnote: TensorFlow ops will be used instead (slower).", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
