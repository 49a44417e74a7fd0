"""Student-teacher pieces (medcl.methods.teacher): EMA, queues, pseudo-labels, weak -> strong, StudentTeacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medcl.methods.actionpp import ActionPPParams
from medcl.methods.base import DataSpec, RunFacts
from medcl.methods.teacher import (
    FeatureQueue,
    StudentTeacher,
    confident,
    ema_update,
    frozen_copy,
    pseudo_labels,
    weak_to_strong,
)
from medcl.services.configs import build_config


def test_ema_update_on_a_tiny_module_by_hand() -> None:
    student = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    teacher = frozen_copy(student)
    with torch.no_grad():
        teacher[0].weight.fill_(1.0), teacher[0].bias.fill_(0.0)
        student[0].weight.fill_(3.0), student[0].bias.fill_(1.0)
        student[1].running_mean.fill_(5.0)
    ema_update(teacher, student, 0.9)
    # theta_t <- 0.9 theta_t + 0.1 theta_s: 0.9 * 1 + 0.1 * 3 = 1.2 and 0.9 * 0 + 0.1 * 1 = 0.1.
    assert teacher[0].weight.item() == pytest.approx(1.2)
    assert teacher[0].bias.item() == pytest.approx(0.1)
    # Buffers are copied, not averaged.
    assert teacher[1].running_mean.item() == 5.0
    assert teacher[1].num_batches_tracked.item() == student[1].num_batches_tracked.item()
    assert student[0].weight.item() == 3.0  # the student is untouched
    assert not any(p.requires_grad for p in teacher.parameters())
    ema_update(teacher, student, 1.0)  # m = 1: the teacher stays
    assert teacher[0].weight.item() == pytest.approx(1.2)
    ema_update(teacher, student, 0.0)  # m = 0: the teacher becomes the student
    assert teacher[0].weight.item() == 3.0


def test_ema_update_rejects_a_bad_momentum_and_other_architectures() -> None:
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ema_update(nn.Linear(1, 1), nn.Linear(1, 1), 1.5)
    with pytest.raises(ValueError, match="different parameter lists"):
        ema_update(nn.Linear(1, 1), nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1)), 0.9)


def test_feature_queue_is_fifo_and_ema_update_follows_the_formula() -> None:
    q = FeatureQueue(4, (2,), labels=True, init="empty")
    q.push(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 2]))
    q.push(torch.full((2, 2), 9.0), torch.tensor([3, 3]))  # wraps: overwrites slot 0
    assert q.labels.tolist() == [3, 1, 2, 3] and q.keys[0].tolist() == [9.0, 9.0] and int(q.ptr) == 1
    student = torch.nn.Linear(3, 2)
    teacher = frozen_copy(student)
    old = teacher.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * old + 0.1 * student.weight)
    assert not teacher.weight.requires_grad


def test_pseudo_labels_and_confidence_mask_on_a_hand_built_softmax() -> None:
    # Four pixels, K = 3; logits = log(probabilities), so the softmax gives the probabilities back.
    prob = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # class 0, confident at 0.6
            [0.3, 0.6, 0.1],  # class 1, exactly at the threshold: counts (>=)
            [0.1, 0.35, 0.55],  # class 2, below
            [0.05, 0.05, 0.9],  # class 2, confident
        ]
    )  # (P, K)
    logits = prob.log().T.reshape(1, 3, 2, 2)  # (1, K, 2, 2): pixel p at (p // 2, p % 2)
    confidence, labels = pseudo_labels(logits)
    assert labels.tolist() == [[[0, 1], [2, 2]]]
    assert confidence.dtype == torch.float32
    assert torch.allclose(confidence, torch.tensor([[[0.7, 0.6], [0.55, 0.9]]]), atol=1e-6)
    assert confident(torch.tensor([[[0.7, 0.6], [0.55, 0.9]]]), 0.6).tolist() == [
        [[True, True], [False, True]]
    ]
    assert not confident(confidence, 0.95).any()


def test_pseudo_labels_of_bf16_logits_are_computed_in_float32() -> None:
    logits = torch.tensor([[[0.0], [math.log(3.0)]]], dtype=torch.bfloat16)  # (1, 2, 1)
    confidence, labels = pseudo_labels(logits)
    assert confidence.dtype == torch.float32 and labels.tolist() == [[1]]
    assert confidence.item() == pytest.approx(0.75, abs=1e-2)


def test_weak_to_strong_without_mixing_or_photometry_keeps_the_weak_view() -> None:
    image = torch.randn(2, 1, 10, 10)
    logits = torch.zeros(2, 2, 10, 10)
    logits[:, 1, :5] = math.log(4.0)  # top half: class 1 at 0.8; bottom half: a 0.5 / 0.5 tie -> class 0
    withheld = torch.zeros(2, 1, 10, 10, dtype=torch.long)
    withheld[0, 0, :5] = 1  # image 0's top half is class 1, image 1 has none
    kwargs = {"mix": "none", "num_classes": 2, "jitter_prob": 0.0, "blur_prob": 0.0}
    strong = weak_to_strong(
        logits, image, generator=torch.Generator().manual_seed(0), withheld=withheld, **kwargs
    )
    assert torch.equal(strong.image, image) and strong.image is not image
    top = torch.zeros(2, 10, 10, dtype=torch.bool)
    top[:, :5] = True
    assert torch.equal(strong.labels, top.long())
    assert torch.allclose(strong.confidence, torch.where(top, 0.8, 0.5))
    assert torch.equal(strong.confident(0.8), top)
    # Class 1 over the batch: |P| = 100, |Y| = 50, |P & Y| = 50 -> Dice 2 * 50 / 150 = 2/3.
    assert strong.quality.item() == pytest.approx(2 / 3)
    assert weak_to_strong(logits, image, generator=torch.Generator().manual_seed(0), **kwargs).quality is None


@pytest.mark.parametrize("mix", ["cutmix", "classmix"])
def test_weak_to_strong_mixes_images_labels_and_confidences_alike(mix) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 8, 8).clone()  # image b is filled with b
    logits = torch.zeros(2, 2, 8, 8)
    logits[1, 1] = 2.0  # image 0: class 0 at 0.5; image 1: class 1 at e^2 / (1 + e^2)
    strong = weak_to_strong(
        logits, image, mix=mix, num_classes=2, jitter_prob=0.0, blur_prob=0.0, generator=g
    )
    source = strong.image[:, 0].long()  # (2, 8, 8): which image each pixel came from
    assert torch.equal(strong.labels, source)  # the pseudo-label of image b is b everywhere
    expected = torch.where(source == 1, math.exp(2) / (1 + math.exp(2)), 0.5)
    assert torch.allclose(strong.confidence, expected)
    again = weak_to_strong(
        logits,
        image,
        mix=mix,
        num_classes=2,
        jitter_prob=0.0,
        blur_prob=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(again.image, strong.image)  # a function of the generator's seed


class _Tiny(StudentTeacher):
    """A linear student, its EMA teacher and a queue of the teacher's outputs."""

    name = "tiny"
    Params = ActionPPParams  # any TeacherParams: the config below names actionpp

    def __init__(self, params, run, spec) -> None:
        super().__init__(params, run, spec)
        self.net = nn.Linear(2, 2)
        self.teacher = frozen_copy(self.net)
        self.head = nn.Linear(2, 1)
        self.queue = FeatureQueue(4, (2,), init="empty")

    def ema_pairs(self):
        return [(self.teacher, self.net)]

    def training_step(self, batch, step):
        with torch.no_grad():
            keys = self.teacher(batch["x"])  # (B, 2)
        self.push_after_step(self.queue, keys)
        loss = (self.head(self.net(batch["x"])) ** 2).mean()
        return {"loss": loss}

    def inference_network(self):
        return self.net


def _tiny(momentum: float = 0.5) -> _Tiny:
    cfg = build_config({"method": {"name": "actionpp"}}, [f"method.ema_momentum={momentum}"])
    spec = DataSpec(in_channels=1, num_classes=2, class_names=("bg", "fg"), spatial_dims=2, patch_size=(4, 4))
    torch.manual_seed(0)
    return _Tiny(cfg.method, RunFacts.of(cfg), spec)


def test_student_teacher_optimises_students_only_and_pushes_after_the_step() -> None:
    method = _tiny(momentum=0.5)
    params = method.param_groups()[0]["params"]
    assert {id(p) for p in params} == {id(p) for p in [*method.net.parameters(), *method.head.parameters()]}
    teacher_before, bias_before = method.teacher.weight.clone(), method.teacher.bias.clone()
    opt = torch.optim.SGD(params, lr=0.1)
    x = torch.ones(3, 2)
    out = method({"x": x}, 0)
    assert int(method.queue.count) == 0 and len(method.pending_pushes) == 1  # waits for on_step_end
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    method.on_step_end(0)
    assert int(method.queue.count) == 3 and method.pending_pushes == []
    expected_keys = x @ teacher_before.T + bias_before  # the teacher's outputs before its EMA step
    assert torch.allclose(method.queue.keys[:3], expected_keys)
    assert torch.allclose(method.teacher.weight, 0.5 * teacher_before + 0.5 * method.net.weight)
    # A step that never reaches on_step_end leaves nothing for the next step.
    method({"x": x}, 1)
    method({"x": x}, 2)
    assert len(method.pending_pushes) == 1


def test_loading_a_student_without_teacher_copies_it_into_the_teacher() -> None:
    method = _tiny()
    donor = {"net.weight": torch.full((2, 2), 7.0), "net.bias": torch.zeros(2)}
    method.load_state_dict(donor, strict=False)  # what --init from a supervised run does
    assert torch.equal(method.teacher.weight, donor["net.weight"])
    full = {k: torch.zeros_like(v) for k, v in method.state_dict().items()}
    full["teacher.weight"] = torch.full((2, 2), 3.0)
    method.load_state_dict(full)  # a student-teacher checkpoint keeps its own teacher
    assert torch.equal(method.teacher.weight, full["teacher.weight"])
