"""Runs every benchmark script in bench/ and collects their JSON lines in bench/results.json.

Each script prints one JSON line; results.json maps the script's name to it. Scripts run one after
the other (each wants the whole machine).
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# compare_models.py trains six models (an hour or more): `make compare` runs it on its own.
SKIP = {"run_all.py", "common.py", "__init__.py", "compare_models.py"}


def main():
  results = {}
  for name in sorted(os.listdir(HERE)):
    if not name.endswith(".py") or name in SKIP:
      continue
    print(f"running bench/{name} ...", flush=True)
    proc = subprocess.run([sys.executable, os.path.join(HERE, name)], capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
      print(f"bench/{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
      sys.exit(1)
    results[name[:-3]] = json.loads(lines[-1])
    print(lines[-1])
  path = os.path.join(HERE, "results.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
