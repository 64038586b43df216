"""`python -m tf_prob_unet.export COMMAND [--flags]`: runs `tf_prob_unet.export.COMMAND`."""

import runpy
import sys

from tf_prob_unet.export import COMMANDS


def main():
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    found = repr(sys.argv[1]) if len(sys.argv) > 1 else "none"
    print(f"usage: python -m tf_prob_unet.export {{{','.join(COMMANDS)}}} [--flags] "
          f"(--helpfull for a command's flags); expected a command, found {found}.",
          file=sys.stderr)
    sys.exit(2)
  command = sys.argv.pop(1)
  runpy.run_module(f"tf_prob_unet.export.{command}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
