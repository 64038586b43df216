"""`python -m tf_prob_unet.pretrained [NAME | verify NAME | pack --flags]`.

- no argument: one line per shipped model: its name, path and the summary of its card;
- `NAME`: the model's path only (`--model_dir=$(python -m tf_prob_unet.pretrained NAME)`);
- `verify NAME_OR_PATH`: checks the checkpoint files against the card's checksums;
- `pack --model_dir=RUN --name=NAME --output_dir=DIR [...]`: makes a shipped-model folder from a
  training run (`tf_prob_unet.pretrained.pack`, `--helpfull` for its flags).
"""

import runpy
import sys

from tf_prob_unet import errors
from tf_prob_unet import pretrained

USAGE = ("usage: python -m tf_prob_unet.pretrained [NAME | verify NAME_OR_PATH | pack --flags]")


def main(argv):
  if len(argv) > 1 and argv[1] == "pack":
    sys.argv = [argv[0]] + argv[2:]
    runpy.run_module("tf_prob_unet.pretrained.pack", run_name="__main__", alter_sys=True)
    return errors.EXIT_OK
  try:
    if len(argv) == 1:
      lines = [f"{n}\t{pretrained.path(n)}\t{pretrained.summary(n)}" for n in pretrained.names()]
    elif len(argv) == 2 and argv[1] not in pretrained.COMMANDS:
      lines = [pretrained.path(argv[1])]
    elif len(argv) == 3 and argv[1] == "verify":
      checked = pretrained.verify(argv[2])
      lines = [f"{argv[2]}: {len(checked)} checkpoint files match the model card's checksums."]
    else:
      print(f"{USAGE}; found {argv[1:]}", file=sys.stderr)
      return errors.EXIT_BAD_INPUT
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return errors.EXIT_BAD_INPUT
  if lines:
    print("\n".join(lines))
  else:
    print(f"(no pretrained models in {pretrained.directory()})", file=sys.stderr)
  return errors.EXIT_OK


if __name__ == "__main__":
  sys.exit(main(sys.argv))
