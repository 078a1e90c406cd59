"""SSS's volume-as-sequence mechanics with random SAM-2 weights (Hiera-T 2.1 from the package's own config, 64x64).

The coarse head is replaced by a fixed map (what PCSW reads) and, where a test needs it, the mask decoder's outputs
are forced through a forward hook on ``sam_mask_decoder`` (the object-score head's output, and full masks): the
code under test — PCSW, prompt placement, propagation with memory, gating by the object score, the label map — runs
unchanged. Every decoder call is identified by the slice its features come from (nearest encoder features).
"""

import numpy as np
import pytest
import torch
from torch import nn

from ssbench.methods.sss.pcsw import component, pcsw, slice_boxes
from ssbench.methods.sss.sam2_net import NO_OBJECT

S, D = 64, 7


class FixedCoarse(nn.Module):
    """Coarse logits fixed per slice: (D, K+1, S, S)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, feats, size):
        assert len(feats) == len(self.logits) and size == self.logits.shape[-1]
        return self.logits


def coarse_map(regions: dict[int, tuple[range, tuple[slice, slice]]]) -> torch.Tensor:
    """class -> (slices, (rows, cols)) where the coarse head says that class (confidently); background elsewhere."""
    logits = torch.full((D, 4, S, S), -8.0)
    logits[:, 0] = 8.0
    for c, (zs, (rows, cols)) in regions.items():
        for z in zs:
            logits[z, 0, rows, cols] = -8.0
            logits[z, c, rows, cols] = 8.0
    return logits


REGIONS = {1: (range(1, 4), (slice(10, 30), slice(8, 26))), 2: (range(3, 7), (slice(34, 54), slice(30, 50)))}


def make(coarse: torch.Tensor, **kw):
    from ssbench.methods.api import MethodContext
    from ssbench.methods.sss import SSS
    from ssbench.methods.sss.config import SSSConfig

    torch.manual_seed(0)
    ctx = MethodContext(1, 4, S, 10, torch.device("cpu"), resize="bilinear")
    method = SSS(SSSConfig(**{"model": "sam2.1_hiera_t", "init": "random", **kw}), ctx)
    method.student.coarse = FixedCoarse(coarse)
    method.eval()
    return method


def volume(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(D, 1, S, S, generator=g)


class DecoderSpy:
    """Records every mask-decoder call: the slice of each row, whether it was prompted, the prompt points and
    labels; optionally forces the object scores (per slice) and the masks (all foreground)."""

    def __init__(self, sam, x, present: set[int] | None = None):
        from ssbench.methods.sss import sam2_net

        with torch.no_grad():
            self.ref = sam2_net.encode(sam, x).maps[0].flatten(1)  # (D, C*h*w) the slices' S/4 features
        self.present = present
        self.calls = []  # (slices, prompted, coords, labels)
        self._points = None
        self.handles = [sam.sam_prompt_encoder.register_forward_pre_hook(self._prompt, with_kwargs=True),
                        sam.sam_mask_decoder.register_forward_hook(self._decoder, with_kwargs=True)]

    def _prompt(self, module, args, kwargs):
        self._points = kwargs["points"]

    def _decoder(self, module, args, kwargs, output):
        rows = kwargs["high_res_features"][0].flatten(1)
        slices = torch.cdist(rows, self.ref).argmin(1).tolist()
        coords, labels = self._points
        prompted = bool((labels >= 0).any())
        self.calls.append((slices, prompted, coords.clone(), labels.clone()))
        if self.present is None:
            return None
        masks, ious, tokens, scores = output
        forced = torch.tensor([[10.0 if z in self.present else -10.0] for z in slices])
        return torch.full_like(masks, 8.0), ious, tokens, forced

    def close(self):
        for h in self.handles:
            h.remove()


def test_absent_class_gets_no_prediction_and_no_prompt():
    method = make(coarse_map(REGIONS))  # class 3: nowhere in the coarse map
    x = volume()
    spy = DecoderSpy(method.student.sam, x)
    scores = method.predict_volume(x)
    spy.close()
    assert scores.shape == (D, 4, S, S)
    assert torch.all(scores[:, 3] == NO_OBJECT)  # never decoded
    assert not (scores.argmax(1) == 3).any()
    prompted = [c for c in spy.calls if c[1]]
    assert len(prompted) == 1 and len(prompted[0][0]) == 2  # one prompted call, for classes 1 and 2 only
    assert all(len(c[0]) == 2 for c in spy.calls)  # class 3 never enters the batch


def test_prompts_go_on_pcsw_slice_and_propagate_both_ways():
    method = make(coarse_map(REGIONS), point_prompt=True)
    x = volume()
    probs = coarse_map(REGIONS).softmax(1).numpy()
    expected = {c: pcsw(probs[:, c]) for c in (1, 2)}
    assert expected[1].slice_index != expected[2].slice_index  # two classes, two prompt slices
    spy = DecoderSpy(method.student.sam, x)
    method.predict_volume(x)
    spy.close()
    first, rest = spy.calls[0], spy.calls[1:]
    assert first[1] and not any(c[1] for c in rest)  # one prompted call, then memory only
    by_slice = {p.slice_index: (c, p) for c, p in expected.items()}
    assert sorted(first[0]) == sorted(by_slice)
    for row, z in enumerate(first[0]):
        _, prompt = by_slice[z]
        coords, labels = first[2][row], first[3][row]
        torch.testing.assert_close(coords[:2].flatten(), torch.tensor(prompt.box))  # PCSW's box on PCSW's slice
        assert labels.tolist() == [2, 3, 1]  # box corners and a positive point ...
        torch.testing.assert_close(coords[2], torch.tensor(prompt.point))  # ... at PCSW's point
        # this row's slices after the prompt: up to the last slice, then from just below the prompt down to 0
        path = [c[0][row] for c in rest]
        up = [z + j for j in range(1, D - z)]
        down = [z - j for j in range(1, z + 1)]
        forward_steps = max(D - 1 - p.slice_index for p in expected.values())
        assert path[: len(up)] == up and all(s == D - 1 for s in path[len(up) : forward_steps])
        back = path[forward_steps:]
        assert back[: len(down)] == down and all(s == 0 for s in back[len(down) :])


def test_point_prompt_off_gives_boxes_only():
    method = make(coarse_map(REGIONS))
    x = volume()
    spy = DecoderSpy(method.student.sam, x)
    method.predict_volume(x)
    spy.close()
    assert spy.calls[0][3].tolist() == [[2, 3], [2, 3]]


@pytest.mark.parametrize("memory", [True, False])
def test_decoded_only_where_object_score_says_present(memory):
    """Class 1 is prompted; the object-score head (forced) says present on slices 2-5 only. With memory every slice
    is reached and exactly the present ones are labelled; without, only the slices of PCSW's component (1-3) are
    prompted, and of those only the present ones are labelled."""
    regions = {1: REGIONS[1]}
    method = make(coarse_map(regions), memory=memory)
    x = volume()
    present = {2, 3, 4, 5}
    spy = DecoderSpy(method.student.sam, x, present=present)
    labels = method.predict_volume(x).argmax(1)
    spy.close()
    reached = {z for c in spy.calls for z in c[0]}
    comp = set(slice_boxes(component(coarse_map(regions).softmax(1)[:, 1].numpy(), pcsw(
        coarse_map(regions).softmax(1)[:, 1].numpy()))))
    assert comp == {1, 2, 3}
    assert reached == (set(range(D)) if memory else comp)
    labelled = {z for z in range(D) if (labels[z] == 1).all()}
    empty = {z for z in range(D) if (labels[z] == 0).all()}
    assert labelled == (present if memory else present & comp)
    assert labelled | empty == set(range(D))


def test_memory_off_boxes_follow_the_component_slice_by_slice():
    regions = {1: (range(1, 4), (slice(10, 30), slice(8, 26)))}
    coarse = coarse_map(regions)
    coarse[2, 0, 10:40, 8:40] = -8.0  # the component is wider on slice 2
    coarse[2, 1, 10:40, 8:40] = 8.0
    method = make(coarse, memory=False)
    x = volume()
    spy = DecoderSpy(method.student.sam, x)
    method.predict_volume(x)
    spy.close()
    assert len(spy.calls) == 1 and spy.calls[0][1]
    slices, _, coords, _ = spy.calls[0]
    got = {z: coords[i][:2].flatten().tolist() for i, z in enumerate(slices)}
    assert got == {1: [8.0, 10.0, 25.0, 29.0], 2: [8.0, 10.0, 39.0, 39.0], 3: [8.0, 10.0, 25.0, 29.0]}


def test_test_labels_change_no_prediction():
    """Evaluation through the engine with the test labels replaced, and with the method's labeled volumes holding
    the test case under the same id with other labels: the predicted label maps are identical."""
    from ssbench.datasets.base import Case
    from ssbench.engine.evaluate import predict_case
    from types import SimpleNamespace

    method = make(coarse_map(REGIONS))
    with torch.no_grad():  # the object-score head says "present" everywhere: every slice is decoded
        method.student.sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(20.0)
    rng = np.random.default_rng(0)
    image = rng.random((D, 80, 72)).astype(np.float32)
    cfg = SimpleNamespace(data=SimpleNamespace(train_size=S, inference_resize="bilinear"),
                          train=SimpleNamespace(eval_batch=16))
    preds = []
    for seed in (1, 2):
        label = np.random.default_rng(seed).integers(0, 4, image.shape).astype(np.uint8)
        method.attach_labeled_volumes({"case": (image, label)})
        preds.append(predict_case(method, Case("case", "p", image, label, None), cfg, torch.device("cpu")))
    assert np.array_equal(preds[0], preds[1])
    # not vacuous: the same pipeline does answer to its input image
    other = predict_case(method, Case("case", "p", image[::-1].copy(), None, None), cfg, torch.device("cpu"))
    assert not np.array_equal(preds[0], other) and preds[0].any()


def test_training_clip_prompts_present_and_absent_classes():
    """A labeled clip starts at the drawn slice; present classes get their ground-truth box, an absent one a decoy
    (its box on the nearest slice that holds it), a class absent from the volume a random box."""
    from ssbench.methods.sss.clips import LabeledVolume, draw_clip
    from ssbench.methods.sss.geometry import Crop, mask_box

    label = np.zeros((6, 64, 64), np.uint8)
    label[2:4, 10:20, 12:30] = 1
    label[4:6, 40:50, 30:44] = 2
    vol = LabeledVolume.of(np.random.default_rng(0).random((6, 64, 64)).astype(np.float32), label, 3)
    torch.manual_seed(3)
    crop = Crop.random(64, (1.0, 1.0))  # the first draw of the clip's crop with this seed
    torch.manual_seed(3)
    images, labels, boxes, points = draw_clip(vol, 2, 2, 64, "bilinear", (1.0, 1.0), decoys=True)
    assert images.shape == (2, 1, 64, 64) and labels.shape == (2, 64, 64)
    flip = crop.flip
    expected_label = torch.from_numpy(label[2:4].astype(np.int64))
    assert torch.equal(labels, expected_label.flip(-1) if flip else expected_label)
    torch.testing.assert_close(boxes[0], mask_box(labels[0] == 1))  # class 1 there: its GT box
    decoy = crop.box(mask_box(torch.from_numpy(label[4] == 2)), 64)  # class 2: nearest holding slice, 4
    torch.testing.assert_close(boxes[1], decoy)
    assert not (labels[0] == 2).any() and not (labels[0] == 3).any()
    b = boxes[2]  # class 3: nowhere in the volume -> a random box inside the image
    assert 0 <= b[0] < b[2] <= 63 and 0 <= b[1] < b[3] <= 63
    assert labels[0][int(points[0, 1]), int(points[0, 0])] == 1  # the point lies on the structure
    # the clip is moved back to fit the volume
    _, late, _, _ = draw_clip(vol, 5, 2, 64, "bilinear", (1.0, 1.0), decoys=True)
    assert (late == 2).any(dim=(1, 2)).tolist() == [True, True]


def test_clip_losses_train_memory_and_object_score():
    """One clip step: the memory modules and the object-score head get gradients; absent classes are supervised
    to absent."""
    from ssbench.methods.sss.clips import ClipBatch, clip_losses

    method = make(coarse_map(REGIONS))
    method.train()
    torch.manual_seed(0)
    labels = torch.zeros(2, 2, S, S, dtype=torch.long)
    labels[:, :, 10:30, 10:30] = 1
    boxes = torch.tensor([[[10.0, 10, 29, 29], [30, 30, 50, 50], [5, 40, 20, 60]]] * 2)
    batch = ClipBatch(torch.rand(2, 2, 1, S, S), labels, boxes, boxes[..., :2])
    sam = method.student.sam
    spy = DecoderSpy(sam, batch.images[0])  # records presence targets implicitly via the calls
    losses = clip_losses(method.student, batch, with_point=False, train_coarse=False)
    spy.close()
    assert len(spy.calls) == 2 and spy.calls[0][1] and not spy.calls[1][1]  # prompted first slice, then memory
    assert len(spy.calls[0][0]) == 6  # 2 clips x 3 classes, absent ones included
    sum(losses.values()).backward()
    for part in ("memory_attention", "memory_encoder", "sam_mask_decoder.pred_obj_score_head"):
        grads = [p.grad for n, p in sam.named_parameters() if n.startswith(part)]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part
