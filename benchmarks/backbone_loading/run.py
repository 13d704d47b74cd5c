"""Peak memory of `load_backbone` on a sharded checkpoint, against the naive way (build the model, then load a state
dict into it). Each load runs in a fresh subprocess, so its peak resident set size (VmHWM) is its own.

    python benchmarks/backbone_loading/run.py          # writes benchmarks/results/backbone_loading.json (1–2 min)
    python benchmarks/backbone_loading/run.py --quick  # a model of ≈ 17 M parameters instead of ≈ 135 M
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dllm_peft.atomic import atomic_write_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "backbone_loading.json"
# Per mode: the model's shape and the shard size, chosen so that each mode writes several shards (7 and 8).
SHAPES = {
    "full": (dict(d_model=1024, n_heads=8, n_kv_heads=8, n_layers=8, mlp_hidden_size=4096), "100MB"),  # ≈ 135 M
    "quick": (dict(d_model=512, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=2048), "10MB"),  # ≈ 17 M
}

WRITE = """
import sys, torch
from dllm_peft.models.byte_tokenizer import ByteTokenizer
from dllm_peft.models.llada import LLaDAModelLM, tiny_llada_config
model = LLaDAModelLM(tiny_llada_config(**{shape}))
model.save_pretrained(sys.argv[1], max_shard_size="{shard_size}")
ByteTokenizer().save_pretrained(sys.argv[1])
"""

# Prints [peak RSS growth, peak anonymous-memory growth, MiB of the loaded parameters]. RSS also counts the pages of
# memory-mapped safetensors files, which the kernel can drop at will; anonymous memory is what the load really costs,
# sampled every 2 ms by a thread.
MEASURE = """
import json, pathlib, sys, threading, time, torch
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
peak_anon, done = [status("RssAnon:")], threading.Event()
def watch():
    while not done.is_set():
        peak_anon.append(status("RssAnon:"))
        time.sleep(0.002)
from dllm_peft.models import load_backbone
from dllm_peft.models.llada import LLaDAModelLM, LLaDAConfig
from safetensors.torch import load_file
directory, how, dtype = sys.argv[1:4]
rss_before, anon_before = status("VmHWM:"), status("RssAnon:")
watcher = threading.Thread(target=watch)
watcher.start()
if how == "load_backbone":
    model = load_backbone(directory, dtype=dtype).model
else:  # naive: a randomly initialised model, then every shard's tensors copied in
    model = LLaDAModelLM(LLaDAConfig.from_pretrained(directory)).to(getattr(torch, dtype))
    for shard in sorted(pathlib.Path(directory).glob("*.safetensors")):
        model.load_state_dict(load_file(shard), strict=False)
done.set()
watcher.join()
size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
print(json.dumps([status("VmHWM:") - rss_before, max(peak_anon) - anon_before, size]))
"""


def run(code: str, *args: str) -> str:
    completed = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                               check=True)
    return completed.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a model of ≈ 17 M parameters instead of ≈ 135 M")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the JSON to write")
    args = parser.parse_args()
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    shape, shard_size = SHAPES[mode]
    results = {
        "command": " ".join(["python", "benchmarks/backbone_loading/run.py", *sys.argv[1:]]),
        "mode": mode,
        "model_shape": shape,
        "loads": [],
    }
    with tempfile.TemporaryDirectory() as directory:
        run(WRITE.format(shape=shape, shard_size=shard_size), directory)
        results["shards"] = len(list(Path(directory).glob("*.safetensors")))
        for dtype in ("float32", "bfloat16"):
            for how in ("load_backbone", "naive"):
                rss, anonymous, size = json.loads(run(MEASURE, directory, how, dtype).splitlines()[-1])
                results["loads"].append({
                    "how": how, "dtype": dtype, "parameters_mib": round(size, 1),
                    "peak_rss_growth_mib": round(rss, 1), "peak_anonymous_growth_mib": round(anonymous, 1),
                    "anonymous_over_model_size": round(anonymous / size, 2),
                })
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_bytes(args.output, (json.dumps(results, indent=2) + "\n").encode())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
