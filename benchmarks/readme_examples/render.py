"""Run the README's examples from a clean folder and write their real output into README.md: no output there is typed.

Each example is a `dllm-peft` command, run in order in a fresh temporary folder (the first trains `out/`, the others
use it), as a user would type it, with its stdout and stderr piped (so each message is one whole line). The output
replaces the block between `<!-- example:NAME -->` and `<!-- /example:NAME -->` in README.md; the train log's
per-5 % progress lines and eval's progress lines are left out, marked by one `…` line. One torch thread, as
`benchmarks/run_all.py` runs the benchmarks: the figures of this tiny task move with the thread count.

    python benchmarks/readme_examples/render.py      # ≈ 3–5 min on 2 cores; rewrites README.md, writes the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "readme_examples.json"
README = ROOT / "README.md"
# (block name, the command as the README shows it); run with bash, so $'…' quoting works as in a terminal
EXAMPLES = (
    ("train", "dllm-peft train --method nara"),
    ("eval", "dllm-peft eval --adapter out"),
    ("sample", "dllm-peft sample --adapter out --prompt $'Last digit: 90417\\nAnswer:' --gen-length 8"),
    ("inspect", "dllm-peft inspect out --levels 5"),
    ("merge", "dllm-peft merge --adapter out --noise-level 0.5 --output merged"),
    ("export", "dllm-peft export --adapter out --noise-level 0.5 --output peft-adapter"),
)
PROGRESS = re.compile(r"^(step \d+/\d+ loss |(base|adapter) · |dllm-peft (base|adapter) [a-z_]+: \d+/\d+ )")


def kept_lines(output: str) -> list[str]:
    """The output without progress lines; each run of dropped lines becomes one `…`."""
    lines: list[str] = []
    for line in output.rstrip("\n").splitlines():
        if PROGRESS.match(line):
            if not lines or lines[-1] != "…":
                lines.append("…")
        else:
            lines.append(line.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run_examples(folder: Path) -> list[dict]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "OMP_NUM_THREADS": "1"}
    launcher = f'dllm-peft() {{ "{sys.executable}" -c "import torch; torch.set_num_threads(1); ' \
               f'from dllm_peft.cli import main; main()" "$@"; }}; '
    records = []
    for name, command in EXAMPLES:
        start = time.perf_counter()
        completed = subprocess.run(
            ["bash", "-c", launcher + command], cwd=folder, env=environment, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if completed.returncode:
            raise SystemExit(f"`{command}` failed ({completed.returncode}):\n{completed.stderr}")
        # stdout and stderr are read apart; the results (stdout) follow the log (stderr), as in a terminal at the end
        lines = kept_lines(completed.stderr) + kept_lines(completed.stdout)
        records.append({"name": name, "command": command, "seconds": round(seconds, 1), "output": lines})
        print(f"{name}: {seconds:.0f} s", flush=True)
    return records


def render(readme: str, records: list[dict]) -> str:
    for record in records:
        block = "\n".join(["```text", f"$ {record['command']}", *record["output"], "```"])
        pattern = re.compile(rf"(<!-- example:{record['name']} -->\n).*?(\n<!-- /example:{record['name']} -->)", re.S)
        readme, count = pattern.subn(lambda match: match.group(1) + block + match.group(2), readme)
        if not count:
            raise SystemExit(f"README.md has no <!-- example:{record['name']} --> block")
    return readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dllm-peft-readme-") as folder:
        records = run_examples(Path(folder))
    atomic_write_bytes(README, render(README.read_text(), records).encode())
    results = {"command": " ".join(["python", *sys.argv]), "threads": 1, "examples": records}
    atomic_write_bytes(args.output, (json.dumps(results, indent=2, ensure_ascii=False) + "\n").encode())
    print(f"rewrote the example blocks of {README.name}; wrote {args.output}")


if __name__ == "__main__":
    main()
