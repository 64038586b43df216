"""Runs every benchmark script in bench/, writes bench/results.json and bench/RESULTS.md.

Each script prints one JSON line; results.json maps the script's name to it, and RESULTS.md shows
every figure with its configuration, target, the machine's core count, the allocator and the date.
Scripts run one after the other (each wants the whole machine), each under the allocator chosen by
`--allocator` (default: `TF_PROB_UNET_ALLOCATOR`, else `auto`: the benchmarks opt in; see
`tf_prob_unet/runtime.py`). `--compare_allocators` also reruns the scripts named there under
every installed allocator and stores their target ratios under `allocator_comparison`.

Usage: python bench/run_all.py [--only sampling,ged] [--allocator auto|tcmalloc|jemalloc|system]
       [--compare_allocators sampling,train_throughput]
"""

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tf_prob_unet import runtime  # noqa: E402  (no TensorFlow import)

# compare_models.py trains six models (an experiment, `make compare`), not a timing figure.
SKIP = {"run_all.py", "common.py", "__init__.py", "compare_models.py"}


def scripts(only=None):
  names = sorted(n[:-3] for n in os.listdir(HERE) if n.endswith(".py") and n not in SKIP)
  if only:
    unknown = sorted(set(only) - set(names))
    if unknown:
      raise SystemExit(f"error: --only: expected names among {names}, found {unknown}")
    names = [n for n in names if n in only]
  return names


def run_script(name, allocator_choice):
  """The JSON record of one script run under `allocator_choice`."""
  used, path = runtime.resolve(allocator_choice)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_PROB_UNET_ALLOCATOR=used)
  env.pop("LD_PRELOAD", None)
  if path:
    env = runtime.preload_environment(env, path)
  print(f"running bench/{name}.py (allocator {used}) ...", flush=True)
  proc = subprocess.run([sys.executable, os.path.join(HERE, name + ".py")], capture_output=True,
                        text=True, env=env, cwd=os.path.dirname(HERE))
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    raise SystemExit(f"error: bench/{name}.py failed (exit {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")
  record = json.loads(lines[-1])
  record["allocator"] = used
  print(lines[-1], flush=True)
  return record


def _meets(value, target):
  match = re.fullmatch(r"\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*", str(target))
  if not match or not isinstance(value, (int, float)):
    return ""
  op, bound = match.group(1), float(match.group(2))
  ok = {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]
  return "met" if ok else "**not met**"


def _fmt(value):
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _flatten(record, prefix=""):
  """Numeric leaves of a record as `(dotted name, value)`, skipping configuration and targets."""
  for key, value in sorted(record.items()):
    if key in ("config", "targets", "cores", "date", "machine", "allocator"):
      continue
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      yield from _flatten(value, name + ".")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield name, value


def markdown(results):
  """RESULTS.md: one table per script (figure, value, target, met), with its configuration."""
  lines = ["# Benchmark results", "",
           "Written by `make bench` (`bench/run_all.py`) from `bench/results.json`; do not edit.",
           ""]
  for name, record in sorted(results.items()):
    if name == "allocator_comparison":
      continue
    targets = record.get("targets", {})
    lines += [f"## bench/{name}.py", "",
              f"{record.get('date', '?')}, {record.get('cores', '?')} cores "
              f"({record.get('machine', '?')}), allocator {record.get('allocator', '?')}.",
              f"Configuration: `{json.dumps(record.get('config', {}), sort_keys=True)}`", "",
              "| figure | value | target | |", "|---|---|---|---|"]
    for key, value in _flatten(record):
      leaf = key.rsplit(".", 1)[-1]
      target = targets.get(key, targets.get(leaf, "")) if "." not in key else ""
      lines.append(f"| `{key}` | {_fmt(value)} | {target} | {_meets(value, target)} |")
    lines.append("")
  comparison = results.get("allocator_comparison")
  if comparison:
    lines += ["## Allocators", "", "The same scripts rerun under each installed runtime.", "",
              "| script | figure | " + " | ".join(comparison["allocators"]) + " |",
              "|---|---|" + "---|" * len(comparison["allocators"])]
    for script, figures in sorted(comparison["figures"].items()):
      for figure, by_allocator in sorted(figures.items()):
        cells = " | ".join(_fmt(by_allocator.get(a, "")) for a in comparison["allocators"])
        lines.append(f"| {script} | `{figure}` | {cells} |")
    lines.append("")
  return "\n".join(lines)


def _atomic_write(path, text):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma-separated script names")
  parser.add_argument("--allocator", default=os.environ.get(runtime.ENV, "auto"),
                      choices=runtime.CHOICES)
  parser.add_argument("--compare_allocators", default="",
                      help="comma-separated scripts to rerun under every installed allocator")
  args = parser.parse_args()
  names = scripts([n for n in args.only.split(",") if n])
  path = os.path.join(HERE, "results.json")
  results = {}
  if os.path.exists(path) and args.only:  # a partial run updates the stored results
    with open(path) as f:
      results = json.load(f)
  for name in names:
    results[name] = run_script(name, args.allocator)
  compare = [n for n in args.compare_allocators.split(",") if n]
  if compare:
    installed = [a for a in ("system", "tcmalloc", "jemalloc") if a == "system"
                 or runtime.find_library(a)]
    figures = {}
    for name in scripts(compare):
      for choice in installed:
        record = run_script(name, choice)
        for key, value in _flatten(record):
          if key in record.get("targets", {}) or key.endswith("_s_per_image") \
              or key.endswith("images_per_s"):
            figures.setdefault(name, {}).setdefault(key, {})[choice] = value
    results["allocator_comparison"] = {"allocators": installed, "figures": figures}
  _atomic_write(path, json.dumps(results, indent=1, sort_keys=True) + "\n")
  _atomic_write(os.path.join(HERE, "RESULTS.md"), markdown(results))
  print(f"wrote {path} and bench/RESULTS.md")


if __name__ == "__main__":
  main()
