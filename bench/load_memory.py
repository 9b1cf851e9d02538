"""Peak memory that loading a checkpoint adds to a process, against the served weights' size: this project's
loader (`core.loading.load_checkpoint`) and transformers' `AutoModel.from_pretrained` (what it replaced), for
each layout of the weights file and each dtype.

    python -m bench.load_memory --name load-memory --models .models/full-st,.models/full-bin [--dtypes bf16,fp32]

Each load runs in a fresh process that has already imported torch and transformers: its peak RSS (VmHWM,
reset just before the load through /proc/self/clear_refs) minus its RSS before the load. The served weights
are the loaded modules' parameter bytes. Writes bench/results/<name>.json (`bench.report` renders it).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
LOADERS = ("ours", "transformers")

CHILD = """
import json, sys, time, torch, transformers
from pathlib import Path
import transformers.modeling_utils, transformers.models.xlm_roberta.modeling_xlm_roberta  # imports are not loading
from transformers import AutoConfig, AutoModel, AutoTokenizer
from serve_app.core.loading import load_checkpoint
loader, model, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
before = status("VmRSS")
start = time.perf_counter()
if loader == "ours":
    from serve_app.core.loading import load_checkpoint
    loaded = load_checkpoint(model, torch.device("cpu"), dtype)
    modules = [loaded.transformer, loaded.colbert_linear, loaded.sparse_linear]
else:
    modules = [transformers.AutoModel.from_pretrained(model, dtype=dtype)]
seconds = time.perf_counter() - start
weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
print(json.dumps({"added_peak_bytes": status("VmHWM") - before, "weights_bytes": weights, "load_s": seconds}))
"""


def measure(loader: str, model: str, dtype: str) -> dict:
    """One load in a fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD, loader, model, DTYPES[dtype]], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def layout_of(model: str) -> str:
    """Which weights file the checkpoint holds."""
    return "safetensors" if (Path(model) / "model.safetensors").is_file() else "bin"


def main(argv: list[str] | None = None) -> dict:
    """Every (model, dtype, loader); print each row, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="load-memory")
    p.add_argument("--models", type=lambda s: s.split(","), required=True, help="checkpoint directories")
    p.add_argument("--dtypes", type=lambda s: s.split(","), default=["bf16", "fp32"])
    args = p.parse_args(argv)
    rows = []
    for model in args.models:
        for dtype in args.dtypes:
            for loader in LOADERS:
                row = {"model": model, "layout": layout_of(model), "dtype": dtype, "loader": loader,
                       **measure(loader, model, dtype)}
                row["ratio"] = row["added_peak_bytes"] / row["weights_bytes"]
                rows.append(row)
                print(f"  {row['layout']} {dtype} {loader}: +{row['added_peak_bytes'] / 2**30:.2f} GiB peak for "
                      f"{row['weights_bytes'] / 2**30:.2f} GiB of weights ({row['ratio']:.2f}x), "
                      f"{row['load_s']:.1f} s", flush=True)
    import psutil

    result = {"benchmark": "load-memory", "name": args.name,
              "command": "python -m bench.load_memory " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
