"""`medcl data check` and `medcl infer` on many files: peak memory stays bounded, throughput.

Synthesises an MSD-layout dataset of N cases by copying the real Task04_Hippocampus cases round-robin (each copy
is a real, valid case under a new id), then runs, each in a fresh process (``resource.getrusage`` of the
child gives its peak resident set):

* ``medcl data check DIR --no-progress`` on 10 and on N cases;
* ``medcl infer --model <random-weight checkpoint of configs/hippocampus/supervised.yaml> --input
  DIR/imagesTr --output OUT --no-progress`` on 10 and on N images.

Printed: seconds, files per second and peak RSS (MiB) for each, and the peak-RSS ratio N vs 10.

Run: ``.venv/bin/python benchmarks/bench_scale.py [--cases 1000]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_infer import random_checkpoint  # untrained weights: timing and memory do not depend on them

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "Task04_Hippocampus"


def synthesise(n: int, out: Path) -> Path:
    """An MSD dataset of ``n`` cases copied round-robin from the real Hippocampus cases."""
    meta = json.loads((SOURCE / "dataset.json").read_text())
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (SOURCE / "imagesTr").glob("*.nii.gz"))
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    training = []
    for i in range(n):
        src, new = ids[i % len(ids)], f"case_{i:05d}"
        shutil.copy(SOURCE / "imagesTr" / f"{src}.nii.gz", out / "imagesTr" / f"{new}.nii.gz")
        shutil.copy(SOURCE / "labelsTr" / f"{src}.nii.gz", out / "labelsTr" / f"{new}.nii.gz")
        training.append({"image": f"./imagesTr/{new}.nii.gz", "label": f"./labelsTr/{new}.nii.gz"})
    meta.update(training=training, numTraining=n, name=f"scale{n}")
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


# A fresh wrapper process per measurement: RUSAGE_CHILDREN's peak is the maximum over every child so far.
_WRAPPER = (
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(p.stderr[-1500:]); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
    "sys.exit(p.returncode)"
)


def measure(cmd: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one command in its own child process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr}")
    return seconds, int(proc.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=1000)
    args = parser.parse_args()
    medcl = [sys.executable, "-m", "medcl.cli"]
    result: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ckpt = random_checkpoint(REPO / "configs/hippocampus/supervised.yaml", SOURCE, tmp_path / "model.pt")
        for n in (10, args.cases):
            data = synthesise(n, tmp_path / f"data{n}")
            seconds, rss = measure([*medcl, "data", "check", str(data), "--no-progress"])
            result[f"data_check_{n}"] = {
                "s": round(seconds, 1),
                "files_per_s": round(2 * n / seconds, 1),
                "peak_rss_mib": round(rss),
            }
            out = tmp_path / f"masks{n}"
            cmd = [
                *medcl,
                "infer",
                "--model",
                str(ckpt),
                "--input",
                str(data / "imagesTr"),
                "--output",
                str(out),
            ]
            seconds, rss = measure([*cmd, "--no-progress", "--device", "cpu"])
            result[f"infer_{n}"] = {
                "s": round(seconds, 1),
                "files_per_s": round(n / seconds, 2),
                "peak_rss_mib": round(rss),
            }
            print(json.dumps({k: v for k, v in result.items() if k.endswith(f"_{n}")}), flush=True)
    n = args.cases
    result["peak_rss_ratio"] = {
        "data_check": round(
            result[f"data_check_{n}"]["peak_rss_mib"] / result["data_check_10"]["peak_rss_mib"], 2
        ),
        "infer": round(result[f"infer_{n}"]["peak_rss_mib"] / result["infer_10"]["peak_rss_mib"], 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
