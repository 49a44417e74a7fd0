"""Strong views: CutMix / ClassMix keep labels consistent with images; jitter and blur are out of place."""

from __future__ import annotations

import pytest
import torch

from medcl.data.mixing import classmix_masks, colour_jitter, cutmix_masks, gaussian_blur, mix, strong_view


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("spatial", [(32, 48), (16, 20, 24)])
def test_cutmix_boxes_cover_half_the_patch(spatial) -> None:
    masks = cutmix_masks(6, spatial, area=0.5, generator=gen())
    assert masks.shape == (6, *spatial) and masks.dtype == torch.bool
    total = torch.tensor(spatial).prod()
    frac = masks.flatten(1).sum(1) / total
    assert torch.allclose(frac, torch.full((6,), 0.5), atol=0.08)
    for m in masks:  # a box: the mask equals the product of its projections on every axis
        proj = [m.any(dim=tuple(d for d in range(len(spatial)) if d != a)) for a in range(len(spatial))]
        box = proj[0].view(-1, *([1] * (len(spatial) - 1)))
        for a in range(1, len(spatial)):
            shape = [1] * len(spatial)
            shape[a] = -1
            box = box & proj[a].view(shape)
        assert torch.equal(m, box)


def test_mixed_labels_follow_the_mixed_images() -> None:
    labels = torch.randint(0, 4, (5, 24, 24), generator=gen(1))
    images = labels.unsqueeze(1).float() * 10 + torch.arange(5).view(
        5, 1, 1, 1
    )  # value encodes (label, sample)
    conf = labels.float() / 10 + torch.arange(5).view(5, 1, 1) / 100
    for masks in (cutmix_masks(5, (24, 24), generator=gen(2)), classmix_masks(labels, 4, generator=gen(3))):
        x, y, c = mix(masks, images, labels, conf)
        assert torch.equal(x[:, 0].div(10).floor().long(), y)
        source = torch.where(masks, torch.arange(5).view(5, 1, 1), (torch.arange(5).view(5, 1, 1) + 1) % 5)
        assert torch.equal(x[:, 0] - y * 10, source.float())
        assert torch.allclose(c, y.float() / 10 + source / 100)
    assert torch.equal(images[:, 0].div(10).floor().long(), labels)  # inputs untouched


def test_classmix_takes_whole_classes_half_of_those_present() -> None:
    labels = torch.randint(0, 4, (8, 16, 16), generator=gen(4))
    labels[0] = 0
    labels[1, :8] = 1
    labels[1, 8:] = 3
    masks = classmix_masks(labels, 4, generator=gen(5))
    for m, y in zip(masks, labels, strict=True):
        present = y.unique()
        chosen = [int(c) for c in present if m[y == c].all()]
        assert all(m[y == c].all() or not m[y == c].any() for c in present)  # all-or-none per class
        assert len(chosen) == (len(present) + 1) // 2
    assert masks[0].all()  # one class present: it is chosen


def test_jitter_and_blur_are_out_of_place_and_respect_probabilities() -> None:
    x = torch.randn(4, 1, 20, 20, generator=gen(6))
    before = x.clone()
    assert torch.equal(colour_jitter(x, prob=0.0, generator=gen()), x)
    assert torch.allclose(gaussian_blur(x, prob=0.0, generator=gen()), x, atol=1e-6)
    j = colour_jitter(x, prob=1.0, generator=gen())
    b = gaussian_blur(x, prob=1.0, generator=gen())
    assert torch.equal(x, before)  # never in place (the authors' bug (i))
    assert not torch.allclose(j, x) and not torch.allclose(b, x)
    assert b.std() < x.std()  # smoothing lowers the variance of white noise
    flat = gaussian_blur(torch.full((2, 1, 8, 8, 8), 3.0), prob=1.0, generator=gen())
    assert torch.allclose(flat, torch.full_like(flat, 3.0), atol=1e-5)  # kernels sum to 1 (3D too)


def test_strong_view_keeps_labels_consistent() -> None:
    labels = torch.randint(0, 3, (4, 16, 16), generator=gen(7))
    images = labels.unsqueeze(1).float()
    x, y, c = strong_view(
        images,
        labels,
        torch.ones(4, 16, 16),
        mode="cutmix",
        num_classes=3,
        jitter_prob=0.0,
        blur_prob=0.0,
        generator=gen(8),
    )
    assert torch.equal(x[:, 0].long(), y) and c.shape == y.shape
    # Any number of maps ride along, mixed by the same boxes (MCSC: both networks' pseudo-labels).
    other = (labels + 1) % 3
    x2, y2, o2 = strong_view(
        images,
        labels,
        other,
        mode="classmix",
        num_classes=3,
        jitter_prob=0.0,
        blur_prob=0.0,
        generator=gen(8),
    )
    assert torch.equal(x2[:, 0].long(), y2) and torch.equal(o2, (y2 + 1) % 3)
    assert not torch.equal(y2, labels)
    with pytest.raises(ValueError, match="mode"):
        strong_view(images, labels, torch.ones(4, 16, 16), mode="mixup", num_classes=3)  # type: ignore[arg-type]
