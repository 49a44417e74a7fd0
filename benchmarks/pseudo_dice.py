"""Why a semi-supervised row helps or not: pseudo-label quality over training, read back from MLflow.

Every semi-supervised method logs ``train/pseudo_dice`` when the split's unlabeled cases do have labels
(ACDC and Hippocampus in the accuracy benchmark): the mean foreground Dice of the pseudo-labels that train the
network - the EMA teacher's (mean teacher, ACTION++), the network's own weak view (FixMatch), the CNN's for
the Transformer and ``train/pseudo_dice_transformer`` the Transformer's for the CNN (MCSC, cross teaching) -
against the withheld labels. The labels never enter a loss. Beside it, ``train/confident_fraction`` (the
share of unlabeled pixels above the confidence threshold, where a method has one) and the validation Dice.

This script reads those curves from the MLflow store of ``benchmarks/accuracy.py`` runs (tracking on, i.e.
without ``--no-tracking``), and writes:

* ``pseudo-dice-<dataset>.png``: pseudo-label Dice and validation Dice against the fraction of each run's steps;
* a markdown table (stdout, and ``pseudo-dice-<dataset>.md``): per run, the pseudo-label Dice at 10/25/50/
  100% of the run (the mean of the values logged in the last 5% of the run before that point, or the last
  value logged before it; each logged value is itself a mean over ``tracking.log_every`` steps), the confident
  fraction at the end, and the best validation Dice with its step. A run still training is read as far as it
  got, against its configured ``train.steps``.

Run: ``.venv/bin/python benchmarks/pseudo_dice.py STORE [STORE ...] --output docs/figures [--dataset acdc]``,
each ``STORE`` an accuracy output folder's MLflow store (``<output>/<dataset>/mlflow.db``) or tracking URI.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

POINTS = (0.1, 0.25, 0.5, 1.0)
WINDOW = 0.05  # fraction of the run averaged around each point
CURVES = {
    "train/pseudo_dice": "pseudo-labels",
    "train/pseudo_dice_transformer": "Transformer's pseudo-labels (teach the CNN)",
}


@dataclass
class RunCurves:
    """The curves of one training run (a child of an accuracy parent run)."""

    name: str
    steps: int
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def at(self, key: str, fraction: float) -> float | None:
        """Mean of ``key`` over the logged steps in the ``WINDOW`` of the run ending at ``fraction`` of it (the
        last value logged before that point where the window holds none; ``None`` before the first)."""
        hi = fraction * self.steps
        before = [(s, v) for s, v in self.curves.get(key, []) if s <= hi]
        values = [v for s, v in before if s >= hi - WINDOW * self.steps]
        if values:
            return sum(values) / len(values)
        return before[-1][1] if before else None

    def best_val(self) -> tuple[float, int] | None:
        points = self.curves.get("val/dice_mean", [])
        if not points:
            return None
        step, value = max(points, key=lambda p: p[1])
        return value, step


def read_store(uri: str) -> list[RunCurves]:
    """Every run of the store (finished, running or killed) that logged ``train/pseudo_dice``."""
    if "://" not in uri and not uri.startswith("sqlite:"):
        if not Path(uri).is_file():  # sqlite would create an empty store and find nothing
            raise SystemExit(f"{uri}: no such MLflow store (expected <accuracy output>/<dataset>/mlflow.db)")
        uri = f"sqlite:///{Path(uri).resolve()}"
    client = MlflowClient(tracking_uri=uri)
    runs = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=1000):
            if "train/pseudo_dice" not in run.data.metrics:
                continue
            steps = int(float(run.data.params.get("train.steps", 0)) or 0)
            keys = [*CURVES, "train/confident_fraction", "val/dice_mean"]
            curves = {
                k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                for k in keys
                if k in run.data.metrics
            }
            name = run.info.run_name or run.info.run_id
            steps = steps or max(s for c in curves.values() for s, _ in c)
            if steps > 0:  # a run killed before its first logged step has no curve to show
                runs.append(RunCurves(name, steps, {k: sorted(v) for k, v in curves.items()}))
    return sorted(runs, key=lambda r: r.name)


def table(runs: list[RunCurves]) -> str:
    head = " | ".join(f"pseudo Dice at {int(p * 100)}%" for p in POINTS)
    lines = [
        f"| run (steps) | {head} | confident fraction at the end | best val Dice (step) |",
        "| --- | " + " | ".join("---" for _ in POINTS) + " | --- | --- |",
    ]

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    for r in runs:
        for key, label in CURVES.items():
            if key not in r.curves:
                continue
            suffix = "" if key == "train/pseudo_dice" else f", {label}"
            best = r.best_val()
            best_s = f"{best[0]:.3f} ({best[1]})" if best and key == "train/pseudo_dice" else ""
            conf = fmt(r.at("train/confident_fraction", 1.0)) if key == "train/pseudo_dice" else ""
            cells = " | ".join(fmt(r.at(key, p)) for p in POINTS)
            lines.append(f"| {r.name} ({r.steps}){suffix} | {cells} | {conf} | {best_s} |")
    return "\n".join(lines)


def figure(runs: list[RunCurves], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        for key, style in (("train/pseudo_dice", "-"), ("train/pseudo_dice_transformer", ":")):
            points = r.curves.get(key)
            if points:
                label = r.name if key == "train/pseudo_dice" else f"{r.name} (Transformer)"
                left.plot([s / r.steps for s, _ in points], [v for _, v in points], style, label=label, lw=1)
        val = r.curves.get("val/dice_mean")
        if val:
            right.plot([s / r.steps for s, _ in val], [v for _, v in val], "o-", label=r.name, ms=3)
    left.set(xlabel="fraction of the run", ylabel="pseudo-label Dice vs withheld labels", ylim=(0, 1))
    right.set(xlabel="fraction of the run", ylabel="validation mean Dice", ylim=(0, 1))
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stores", nargs="+", help="MLflow stores (mlflow.db files or tracking URIs)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the figure and the table")
    parser.add_argument("--dataset", default="acdc", help="name used in the file names and the title")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    runs = [r for store in args.stores for r in read_store(store)]
    if not runs:
        raise SystemExit(f"no run with train/pseudo_dice in {', '.join(args.stores)} (tracking was off?)")
    args.output.mkdir(parents=True, exist_ok=True)
    md = table(runs)
    print(md)
    (args.output / f"pseudo-dice-{args.dataset}.md").write_text(md + "\n", encoding="utf-8")
    title = args.title or f"{args.dataset}: pseudo-label quality and validation Dice over training"
    figure(runs, args.output / f"pseudo-dice-{args.dataset}.png", title)
    print(f"wrote {args.output / f'pseudo-dice-{args.dataset}.png'}")


if __name__ == "__main__":
    main()
