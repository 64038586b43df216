"""`python -m tf_prob_unet.flagfiles [NAME]`: the packaged flagfiles' paths, or `NAME.flags`'s."""

import sys

from tf_prob_unet import flagfiles


def main(argv):
  if len(argv) > 2:
    print(f"usage: python -m tf_prob_unet.flagfiles [NAME]; found {argv[1:]}", file=sys.stderr)
    return 2
  try:
    lines = [flagfiles.path(argv[1])] if len(argv) == 2 else [
        flagfiles.path(n) for n in flagfiles.names()]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
