"""What ``medcl suggest`` writes: the ranking as CSV, the splits with the suggestion moved, a montage.

The montage shows each suggested case (or group, by its most uncertain member) as the slice with the most
uncertainty, the map overlaid in red to yellow, with its rank, id and score.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from medcl.data.splits import Splits
from medcl.errors import DataError
from medcl.runtime.files import write_text_atomic
from medcl.suggest.ranking import MONTAGE_CASES, SuggestResult

__all__ = ["CSV_COLUMNS", "montage", "updated_splits", "write_csv"]

#: Columns of the suggestions CSV.
CSV_COLUMNS = ("rank", "case", "score", "suggested", "strategy", "model_run", "cases")


def write_csv(result: SuggestResult, path: str | Path) -> Path:
    """The ranking as CSV: one row per group, :data:`CSV_COLUMNS`; ``cases`` joins members with ``;``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
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
    return write_text_atomic(path, buffer.getvalue())


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
