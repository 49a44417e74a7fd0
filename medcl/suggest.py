"""Which cases to label next: score the unlabeled pool with a trained model and rank it (``medcl suggest``).

The pool is the ``unlabeled`` subset of a splits file (or every image of a folder). Each case is predicted
once with the model's own preprocessing and sliding window (:class:`~medcl.inference.predictor.Predictor`)
and scored on the network's grid; no mask is written. Strategies (maths and references in
:mod:`medcl.inference.uncertainty`):

* ``disagreement``: 1 - Dice between the two networks a method trains (MCSC's CNN and Transformer; a student
  and its EMA teacher). Free: no extra passes beyond the second network's.
* ``entropy``: mean normalised entropy of the softmax over the predicted foreground and its border.
* ``tta``: mean variance of the softmax over flips and quarter turns (4 + 2 passes for 2D models, 8 + 2 for 3D).
* ``diverse``: the entropy, weighted by the distance of each case's pooled bottleneck embedding to the labeled
  cases and the cases picked before it (greedy k-center), so that a budget of 5 does not go to 5 copies of one
  anatomy.
* ``random``: a seeded shuffle, the baseline every strategy has to beat.

With ``group_by`` (e.g. ``patient\\d+`` for ACDC) whole groups are ranked: a group's score is the mean of its
cases' scores, its embedding the mean of theirs, and the budget counts groups. The result is a full ranking of
the pool; the first ``budget`` rows are the suggestion.
"""

from __future__ import annotations

import csv
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medcl.data.splits import Splits, _group_cases
from medcl.errors import ConfigError, DataError, MedclError
from medcl.inference.uncertainty import (
    dice_agreement,
    disagreement_map,
    foreground_region,
    greedy_diverse_order,
    normalized_entropy,
    region_mean,
)
from medcl.suggest_strategies import STRATEGIES, Strategy

log = logging.getLogger(__name__)

#: Columns of the suggestions CSV.
CSV_COLUMNS = ("rank", "case", "score", "suggested", "strategy", "model_run", "cases")
#: Tiles in the montage at most.
MONTAGE_CASES = 8

__all__ = [
    "CSV_COLUMNS",
    "STRATEGIES",
    "Strategy",
    "CaseScore",
    "PoolCase",
    "Ranked",
    "SuggestResult",
    "montage",
    "paired_networks",
    "rank_groups",
    "load_pool",
    "log_to_mlflow",
    "score_cases",
    "suggest",
    "supported_strategies",
    "updated_splits",
    "write_csv",
]


@dataclass
class PoolCase:
    """A case that may be suggested (or, for ``diverse``, a labeled case): its id and one path per channel."""

    id: str
    paths: list[Path]


@dataclass
class CaseScore:
    """One case's score, its pooled embedding (``diverse``) and a thumbnail for the montage.

    Attributes:
        case: Case id.
        score: Higher = more worth labelling; ``None`` for ``random``.
        embedding: Pooled bottleneck features, shape ``(D,)`` (``diverse`` only).
        thumbnail: ``(image slice, uncertainty slice)`` of the slice with the most uncertainty, float32 2D.
    """

    case: str
    score: float | None
    embedding: np.ndarray | None = None
    thumbnail: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class Ranked:
    """One row of the ranking: a group (or a case without ``group_by``) and its members."""

    rank: int
    case: str
    score: float | None
    suggested: bool
    cases: list[str]


@dataclass
class SuggestResult:
    """What :func:`suggest` returns: the full ranking and how it was made."""

    strategy: str
    budget: int
    rows: list[Ranked]
    model: str
    model_run: str | None
    group_by: str | None
    seconds_per_case: float
    scores: dict[str, CaseScore] = field(default_factory=dict)

    @property
    def suggested(self) -> list[Ranked]:
        """The first ``budget`` rows."""
        return [r for r in self.rows if r.suggested]

    @property
    def suggested_cases(self) -> list[str]:
        """Every case id of the suggested groups, in rank order."""
        return [c for r in self.suggested for c in r.cases]


def paired_networks(method: nn.Module | None) -> dict[str, nn.Module]:
    """The two networks of a method that trains two, by name; empty when it trains one.

    MCSC (and any method validating several networks) gives its first two validation networks (``cnn``,
    ``transformer``); a student-teacher method (``ema_pairs``, e.g. ``actionpp``) gives ``student`` and
    ``teacher`` when both are segmentation networks.
    """
    if method is None:
        return {}
    from medcl.models.networks import SegNet

    nets = dict(method.validation_networks()) if hasattr(method, "validation_networks") else {}
    if len(nets) >= 2:
        names = list(nets)[:2]
        return {n: nets[n] for n in names}
    pairs = getattr(method, "ema_pairs", None)
    if callable(pairs):
        for teacher, student in pairs():
            if isinstance(teacher, SegNet) and isinstance(student, SegNet):
                return {"student": student, "teacher": teacher}
    return {}


def supported_strategies(method: nn.Module | None) -> list[str]:
    """The strategies a trained method supports: all but ``disagreement`` unless it has two networks."""
    return [s for s in STRATEGIES if s != "disagreement" or paired_networks(method)]


def check_strategy(strategy: str, method: nn.Module | None, model: str = "the model") -> None:
    """Raise a one-sentence error for an unknown strategy, or ``disagreement`` on a one-network model.

    Raises:
        ConfigError: Naming the strategies the model supports.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "disagreement" and not paired_networks(method):
        name = getattr(method, "name", None) or type(method).__name__
        raise ConfigError(
            f"--strategy disagreement needs two networks trained together (MCSC's CNN and Transformer, or a "
            f"student and its EMA teacher), but {model} (method {name}) has one; strategies this model supports: "
            f"{', '.join(supported_strategies(method))}"
        )


class _EmbeddingTap:
    """Wraps a :class:`SegNet` for the sliding window: returns its logits, sums its pooled bottleneck."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.total: torch.Tensor | None = None
        self.count = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x, return_features=True)
        pooled = out.embedding.float().flatten(2).mean(2)  # (B, C_e): one vector per window
        self.total = pooled.sum(0) if self.total is None else self.total + pooled.sum(0)
        self.count += pooled.shape[0]
        return out.logits

    def embedding(self) -> np.ndarray:
        if self.total is None:
            raise MedclError("no window reached the network; cannot pool an embedding")
        return (self.total / self.count).cpu().numpy()


def _thumbnail(image: torch.Tensor, vmap: torch.Tensor, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``axis`` slice with the most uncertainty: ``(image channel 0, map)``, each 2D float32."""
    sums = vmap.float().sum(dim=[d for d in range(3) if d != axis])  # (n_slices,)
    index = int(sums.argmax()) if float(sums.max()) > 0 else vmap.shape[axis] // 2
    img = torch.as_tensor(image)[0].float().select(axis, index)
    return img.cpu().numpy().astype(np.float32), vmap.float().select(axis, index).cpu().numpy().astype(
        np.float32
    )


def _prepare(net: nn.Module, predictor: Any) -> nn.Module:
    """A network of the method on the predictor's device and arithmetic, in eval mode."""
    from medcl.precision import set_compute_dtype

    net = net.to(predictor.device).eval()
    set_compute_dtype(net, predictor.precision.dtype)
    return net


def score_cases(
    predictor: Any,
    cases: Sequence[PoolCase],
    strategy: str,
    *,
    networks: dict[str, nn.Module] | None = None,
    border: int = 3,
    progress: bool = False,
    desc: str = "score",
) -> list[CaseScore]:
    """Score each case with one strategy (``random`` scores nothing: see :func:`suggest`).

    Args:
        predictor: A loaded :class:`~medcl.inference.predictor.Predictor`.
        cases: The cases.
        strategy: ``disagreement``, ``entropy``, ``tta`` or ``diverse`` (entropy + embedding).
        networks: For ``disagreement``: the two networks (default :func:`paired_networks` of the predictor's
            method). Any callable mapping ``(B, C, *S)`` to ``(B, K, *S)`` logits works, which is how the tests
            hand-build networks.
        border: Voxels around the predicted foreground that the entropy and TTA scores also average over.
        progress: A progress bar over cases.
        desc: Its label.

    Returns:
        One :class:`CaseScore` per case, in order.

    Raises:
        DataError: A case cannot be read or preprocessed (names the file).
    """
    from medcl.models.networks import SegNet

    axis = predictor.cfg.data.slice_axis if predictor.spec.spatial_dims == 2 else 2
    k = predictor.spec.num_classes
    pair: list[nn.Module] = []
    if strategy == "disagreement":
        nets = networks if networks is not None else paired_networks(predictor.method)
        if len(nets) != 2:
            raise ConfigError(f"disagreement needs exactly two networks; got {len(nets)}")
        pair = [_prepare(n, predictor) if isinstance(n, nn.Module) else n for n in nets.values()]
    views = predictor.tta_views(rotations=True) if strategy == "tta" else None
    out = []
    for case in tqdm(cases, desc=desc, disable=not progress, dynamic_ncols=True):
        try:
            _, image = predictor.preprocess_case(case.paths)
            embedding = None
            if strategy == "disagreement":
                pa, _ = predictor.probability_stats(image, net=pair[0])
                pb, _ = predictor.probability_stats(image, net=pair[1])
                score = 1.0 - dice_agreement(pa.argmax(0), pb.argmax(0), k)
                vmap = disagreement_map(pa, pb)
            elif strategy == "tta":
                mean, var = predictor.probability_stats(image, views, variance=True)
                vmap = var.mean(0)
                score = region_mean(vmap, foreground_region(mean.argmax(0), border))
            elif strategy in ("entropy", "diverse"):
                tap = None
                if strategy == "diverse":
                    if not isinstance(predictor.net, SegNet):
                        raise ConfigError(
                            "the diverse strategy needs a medcl network (its bottleneck features)"
                        )
                    tap = _EmbeddingTap(predictor.net)
                mean, _ = predictor.probability_stats(image, net=tap)
                vmap = normalized_entropy(mean, dim=0)
                score = region_mean(vmap, foreground_region(mean.argmax(0), border))
                embedding = tap.embedding() if tap is not None else None
            else:
                raise ConfigError(
                    f"score_cases: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
                )
        except (RuntimeError, ValueError) as exc:  # the network or sliding window on this case
            raise DataError(f"{case.id} ({case.paths[0]}): scoring failed: {exc}") from exc
        out.append(CaseScore(case.id, float(score), embedding, _thumbnail(image, vmap, axis)))
    return out


def rank_groups(scores: dict[str, float], group_by: str | None = None) -> list[tuple[str, float, list[str]]]:
    """Groups by decreasing mean score of their cases: ``(group, score, cases)``.

    Ties are broken by the group's name, so the order never depends on the order of the pool.

    Raises:
        ConfigError: ``group_by`` is not a valid regular expression.
        DataError: A case id does not match ``group_by``.
    """
    groups = _group_cases(list(scores), group_by)
    ranked = [
        (key, float(np.mean([scores[c] for c in members])), sorted(members))
        for key, members in groups.items()
    ]
    return sorted(ranked, key=lambda row: (-row[1], row[0]))


def suggest(
    predictor: Any,
    pool: Sequence[PoolCase],
    strategy: str,
    budget: int,
    *,
    group_by: str | None = None,
    labeled: Sequence[PoolCase] = (),
    seed: int = 0,
    border: int = 3,
    networks: dict[str, nn.Module] | None = None,
    progress: bool = False,
) -> SuggestResult:
    """Rank the pool with one strategy; the first ``budget`` groups are the suggestion.

    Args:
        predictor: A loaded :class:`~medcl.inference.predictor.Predictor` (with its method for
            ``disagreement``).
        pool: The unlabeled cases.
        strategy: One of :data:`STRATEGIES`.
        budget: Groups (cases without ``group_by``) to suggest, at least 1 and at most the pool's groups.
        group_by: Regular expression grouping case ids (``patient\\d+``): groups are ranked, not cases.
        labeled: Labeled cases; ``diverse`` keeps away from their embeddings (others ignore them).
        seed: Seed of ``random``.
        border: See :func:`score_cases`.
        networks: See :func:`score_cases`.
        progress: Progress bars.

    Returns:
        The full ranking of the pool's groups with their scores.

    Raises:
        ConfigError: Unknown strategy, ``disagreement`` on a model with one network, budget below 1, bad
            ``group_by``.
        DataError: Empty pool, budget above the pool's groups, a case id that does not match ``group_by``, a
            case that cannot be read.
    """
    if networks is None:
        check_strategy(strategy, predictor.method, predictor.source)
    elif strategy not in STRATEGIES:
        check_strategy(strategy, None)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget must be a whole number of at least 1; got {budget!r}")
    if not pool:
        raise DataError("the pool of unlabeled cases is empty: there is nothing to suggest")
    ids = [c.id for c in pool]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"the pool names a case twice: {', '.join(dup[:5])}")
    groups = _group_cases(ids, group_by)
    unit = "group(s)" if group_by else "case(s)"
    if budget > len(groups):
        raise DataError(
            f"--budget {budget} is larger than the pool: {len(groups)} unlabeled {unit}"
            + (f" ({len(ids)} cases, group_by {group_by!r})" if group_by else "")
            + f"; ask for at most {len(groups)}"
        )
    start = time.perf_counter()
    scores: dict[str, CaseScore] = {}
    rows: list[tuple[str, float | None]]
    if strategy == "random":
        keys = sorted(groups)
        random.Random(seed).shuffle(keys)
        rows = [(key, None) for key in keys]
        # Thumbnails (entropy overlays) only for the montage's cases.
        chosen = [c for key in keys[: min(budget, MONTAGE_CASES)] for c in pool if c.id in groups[key]]
        scored: list[CaseScore] = []
    else:
        scored = score_cases(
            predictor, pool, strategy, networks=networks, border=border, progress=progress, desc=strategy
        )
        scores = {s.case: s for s in scored}
        ranking = rank_groups({s.case: s.score for s in scored}, group_by)
        group_score = {key: score for key, score, _ in ranking}
        if strategy == "diverse":
            keys = list(groups)
            emb = np.stack([np.mean([scores[c].embedding for c in groups[key]], axis=0) for key in keys])
            lab = None
            if labeled:
                lab_scores = score_cases(
                    predictor, labeled, "diverse", border=border, progress=progress, desc="labeled"
                )
                lab = np.stack([s.embedding for s in lab_scores])
            order = greedy_diverse_order(np.array([group_score[k] for k in keys]), emb, lab)
            rows = [(keys[i], gain) for i, gain in order]
        else:
            rows = [(key, score) for key, score, _ in ranking]
    seconds = time.perf_counter() - start
    if strategy == "random":
        thumbs = score_cases(predictor, chosen, "entropy", border=border) if chosen else []
        scores = {s.case: CaseScore(s.case, None, None, s.thumbnail) for s in thumbs}
    ranked = [
        Ranked(rank=i + 1, case=key, score=score, suggested=i < budget, cases=sorted(groups[key]))
        for i, (key, score) in enumerate(rows)
    ]
    return SuggestResult(
        strategy=strategy,
        budget=budget,
        rows=ranked,
        model=str(predictor.source),
        model_run=predictor.model_run_id,
        group_by=group_by,
        seconds_per_case=seconds / len(pool),
        scores=scores,
    )


def write_csv(result: SuggestResult, path: str | Path) -> Path:
    """The ranking as CSV: one row per group, :data:`CSV_COLUMNS`; ``cases`` joins members with ``;``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in result.rows:
            writer.writerow(
                [
                    r.rank,
                    r.case,
                    "" if r.score is None else f"{r.score:.6g}",
                    int(r.suggested),
                    result.strategy,
                    result.model_run or result.model,
                    ";".join(r.cases),
                ]
            )
    tmp.replace(path)
    return path


def updated_splits(splits: Splits, result: SuggestResult) -> Splits:
    """The splits with the suggested cases moved from ``unlabeled`` to the end of ``labeled``.

    ``meta["suggested"]`` records the strategy, model, budget and cases; other subsets are unchanged.

    Raises:
        DataError: A suggested case is not in the splits' ``unlabeled`` subset.
    """
    moved = result.suggested_cases
    missing = [c for c in moved if c not in splits.unlabeled]
    if missing:
        raise DataError(
            f"suggested case(s) {', '.join(missing[:5])} are not in 'unlabeled' of the splits; cannot move them"
        )
    taken = set(moved)
    history = list(splits.meta.get("suggested", []))
    history.append(
        {
            "strategy": result.strategy,
            "model": result.model,
            "model_run": result.model_run,
            "budget": result.budget,
            "group_by": result.group_by,
            "cases": moved,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    return Splits(
        labeled=[*splits.labeled, *moved],
        unlabeled=[c for c in splits.unlabeled if c not in taken],
        val=list(splits.val),
        test=list(splits.test),
        meta={**splits.meta, "suggested": history},
    )


def _colorize(image: np.ndarray, vmap: np.ndarray, vmax: float) -> np.ndarray:
    """Gray image with the map on top in red-yellow (alpha grows with the value), RGB float in [0, 1]."""
    lo, hi = np.percentile(image, [1, 99])
    gray = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    v = np.clip(vmap / max(vmax, 1e-6), 0, 1)
    heat = np.stack([np.ones_like(v), v, np.zeros_like(v)], -1)  # red (low) to yellow (high)
    alpha = (0.7 * v)[..., None]
    return (1 - alpha) * np.stack([gray] * 3, -1) + alpha * heat


def montage(result: SuggestResult, tile: int = 192, cases: int | None = None) -> np.ndarray | None:
    """A row of the suggested cases: each the slice with the most uncertainty, the map overlaid, a caption.

    Args:
        result: What :func:`suggest` returned.
        tile: Tile width and height in pixels (slices are enlarged or shrunk to fit, nearest neighbour).
        cases: Tiles; default the budget, at most :data:`MONTAGE_CASES`.

    Returns:
        RGB uint8 ``(H, W, 3)``, or ``None`` when no thumbnail is available.
    """
    from PIL import Image, ImageDraw

    tiles = []
    picked = []
    count = min(result.budget, MONTAGE_CASES) if cases is None else cases
    for row in result.rows[:count]:
        # The group's most uncertain member stands for it.
        members = [result.scores[c] for c in row.cases if c in result.scores and result.scores[c].thumbnail]
        if members:
            best = max(members, key=lambda s: float(s.thumbnail[1].sum()))
            picked.append((row, best))
    if not picked:
        return None
    vmax = max(float(np.percentile(s.thumbnail[1], 99.9)) for _, s in picked) or 1.0
    for row, s in picked:
        pic = np.rot90(_colorize(*s.thumbnail, vmax))
        img = Image.fromarray((np.clip(pic, 0, 1) * 255).astype(np.uint8))
        if max(img.size) > tile:
            img.thumbnail((tile, tile), Image.Resampling.NEAREST)
        scale = max(1, tile // max(img.size))
        img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.Resampling.NEAREST)
        canvas = Image.new("RGB", (tile, tile + 28), (0, 0, 0))
        canvas.paste(img, ((tile - img.size[0]) // 2, (tile - img.size[1]) // 2))
        draw = ImageDraw.Draw(canvas)
        score = "" if row.score is None else f"score {row.score:.3g}"
        member = "" if s.case == row.case else f"{s.case}  "
        draw.text((4, tile + 2), f"#{row.rank} {row.case}"[:30], fill=(255, 255, 255))
        draw.text((4, tile + 14), f"{member}{score}"[:30], fill=(200, 200, 200))
        tiles.append(np.asarray(canvas))
    return np.concatenate(tiles, axis=1)


def model_run_of(source: str, predictor_run: str | None) -> str | None:
    """The MLflow run that trained the model: the checkpoint's record, else a run id in ``source``."""
    if predictor_run:
        return predictor_run
    match = re.fullmatch(r"(?:runs:/)?([0-9a-f]{32})(?:/.*)?", source)
    return match.group(1) if match else None


def log_to_mlflow(
    result: SuggestResult,
    files: Sequence[Path],
    *,
    store: tuple[str, str | None],
    extra_params: dict[str, Any] | None = None,
) -> tuple[str, str | None]:
    """A run holding the suggestion: nested under the model's run when the store has it.

    The run goes into the model run's experiment with ``mlflow.parentRunId`` set (the MLflow UI shows it
    under the training run); a model from elsewhere gets a run in experiment ``suggestions``. Params: strategy,
    budget, pool size, group_by; metric ``suggest/seconds_per_case``; the files as artifacts.

    Args:
        result: The suggestion.
        files: Logged under ``suggest/`` (the CSV, the montage, the new splits).
        store: ``(tracking URI, artifact root or None)`` of the store that gets the run.
        extra_params: More params (the data and splits given).

    Returns:
        ``(run id, parent run id or None)``.
    """
    import mlflow

    from medcl.tracking.mlflow_tracking import MlflowTracker

    uri, artifact_root = store
    parent = result.model_run
    experiment = "suggestions"
    if parent:
        try:
            run = mlflow.MlflowClient(tracking_uri=uri).get_run(parent)
            experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id).name
        except Exception:  # the model's run lives in another store: link by tag only
            log.info("model run %s is not in %s; the suggestion run is not nested", parent, uri)
            parent = None
    tracker = MlflowTracker(uri, artifact_root, experiment)
    tags = {
        "medcl.command": "suggest",
        "medcl.strategy": result.strategy,
        "medcl.model": result.model,
        **({"medcl.model_run": result.model_run} if result.model_run else {}),
        **({"mlflow.parentRunId": parent} if parent else {}),
    }
    run_id = tracker.start(run_name=f"suggest-{result.strategy}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
    try:
        tracker.log_params(
            {
                "strategy": result.strategy,
                "budget": result.budget,
                "pool_groups": len(result.rows),
                "pool_cases": sum(len(r.cases) for r in result.rows),
                "group_by": result.group_by or "",
                "model": result.model,
                **(extra_params or {}),
            }
        )
        tracker.log_metrics({"suggest/seconds_per_case": result.seconds_per_case}, step=0)
        tracker.log_dict(
            {
                "suggested": [
                    {"rank": r.rank, "case": r.case, "score": r.score, "cases": r.cases}
                    for r in result.suggested
                ]
            },
            "suggest/suggested.json",
        )
        for f in files:
            tracker.log_artifact(f, "suggest")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return run_id, parent


def load_pool(
    data: str | Path,
    splits_path: str | Path | None = None,
    *,
    labeled_groups: int | None = None,
    group_by: str | None = None,
) -> tuple[list[PoolCase], list[PoolCase], Splits | None]:
    """The pool (and the labeled cases) from a dataset + splits file, a dataset alone, or an image folder.

    Args:
        data: A dataset folder (``dataset.json``), or a folder / ``.txt`` list of images (no splits then).
        splits_path: A splits file: the pool is its ``unlabeled`` subset.
        labeled_groups: As ``--labeled N`` of training: keep the first N labeled groups of the splits, the
            rest joins the pool (what a model trained with ``--labeled N`` saw).
        group_by: Grouping of ``labeled_groups``.

    Returns:
        ``(pool, labeled, splits)``; ``splits`` is None without a splits file. A dataset without a splits file
        offers its unlabeled cases (``imagesTs``, the ``test`` list, images without labels); an image folder
        offers every image and has no labeled cases.

    Raises:
        DataError: Unreadable dataset or splits, unknown ids, an empty pool (with what to do about it).
    """
    from medcl.data.dataset import load_dataset
    from medcl.inference.inputs import collect_inputs

    root = Path(data).expanduser()
    if not (root / "dataset.json").is_file():
        if splits_path is not None:
            raise DataError(f"--splits needs a dataset folder with dataset.json as --data; {root} has none")
        cases = collect_inputs([str(root)])
        return [PoolCase(c.name, list(c.paths)) for c in cases], [], None
    info = load_dataset(root)
    splits = None
    if splits_path is not None:
        splits = Splits.load(splits_path)
        splits.check_against(info)
        if labeled_groups is not None:
            splits = splits.with_labeled(labeled_groups, group_by=group_by)
        pool_ids, labeled_ids = list(splits.unlabeled), list(splits.labeled)
    else:
        pool_ids, labeled_ids = [c.id for c in info.unlabeled], [c.id for c in info.cases]
    if not pool_ids:
        where = f"splits file {splits_path}" if splits_path else f"dataset {info.root}"
        raise DataError(
            f"{where} has no unlabeled cases to suggest from; move candidates to 'unlabeled' or pass --labeled N "
            "(as in training) to treat all but the first N labeled groups as unlabeled"
        )

    def case(i: str) -> PoolCase:
        return PoolCase(i, list(info.case(i).images))

    return [case(i) for i in pool_ids], [case(i) for i in labeled_ids], splits
