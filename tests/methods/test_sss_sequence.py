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

pytestmark = pytest.mark.usefixtures("sam2_once")  # SAM-2 built once per session (conftest)

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


def make(coarse: torch.Tensor | None, **kw):
    """The method with random SAM-2 weights; ``coarse``: the fixed coarse map PCSW reads (None: the trained head,
    as the labeled clips need)."""
    from ssbench.methods.api import MethodContext
    from ssbench.methods.sss import SSS
    from ssbench.methods.sss.hparams import SSSConfig

    torch.manual_seed(0)
    ctx = MethodContext(1, 4, S, 10, torch.device("cpu"), resize="bilinear")
    method = SSS(SSSConfig(**{"model": "sam2.1_hiera_t", "init": "random", **kw}), ctx)
    if coarse is not None:
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


def _clip_volume():
    """6 slices: class 1 on slices 2-3, class 2 on 4-5, class 3 nowhere."""
    from ssbench.methods.sss.clips import LabeledVolume

    label = np.zeros((6, 64, 64), np.uint8)
    label[2:4, 10:20, 12:30] = 1
    label[4:6, 40:50, 30:44] = 2
    return LabeledVolume.of(np.random.default_rng(0).random((6, 64, 64)).astype(np.float32), label, 3), label


def test_training_clip_prompts_present_and_absent_classes():
    """A labeled clip starts at the drawn slice; present classes get their ground-truth box, an absent one a decoy
    (its box on the nearest slice that holds it), a class absent from the volume a random box."""
    from ssbench.methods.sss.clips import draw_clip
    from ssbench.methods.sss.geometry import Crop, mask_box

    vol, label = _clip_volume()
    torch.manual_seed(3)
    crop = Crop.random(64, (1.0, 1.0))  # the first draw of the clip's crop with this seed
    torch.manual_seed(3)
    images, labels, boxes, points, present = draw_clip(vol, 2, 2, 64, "bilinear", (1.0, 1.0))
    assert images.shape == (2, 1, 64, 64) and labels.shape == (2, 64, 64)
    flip = crop.flip
    expected_label = torch.from_numpy(label[2:4].astype(np.int64))
    assert torch.equal(labels, expected_label.flip(-1) if flip else expected_label)
    assert present.tolist() == [True, False, False]
    torch.testing.assert_close(boxes[0], mask_box(labels[0] == 1))  # class 1 there: its GT box
    decoy = crop.box(mask_box(torch.from_numpy(label[4] == 2)), 64)  # class 2: nearest holding slice, 4
    torch.testing.assert_close(boxes[1], decoy)
    assert not (labels[0] == 2).any() and not (labels[0] == 3).any()
    b = boxes[2]  # class 3: nowhere in the volume -> a random box inside the image
    assert 0 <= b[0] < b[2] <= 63 and 0 <= b[1] < b[3] <= 63
    assert labels[0][int(points[0, 1]), int(points[0, 0])] == 1  # the point lies on the structure
    # the clip is moved back to fit the volume
    late = draw_clip(vol, 5, 2, 64, "bilinear", (1.0, 1.0))[1]
    assert (late == 2).any(dim=(1, 2)).tolist() == [True, True]
    # a clip down the volume: slices 3, 2, 1 in that order, prompted on slice 3
    down = draw_clip(vol, 3, 3, 64, "bilinear", (1.0, 1.0), backward=True)
    holds = (down[1] == 1).any(dim=(1, 2)).tolist()
    assert holds == [True, True, False] and down[4].tolist() == [True, False, False]
    assert draw_clip(vol, 1, 3, 64, "bilinear", (1.0, 1.0), backward=True)[1].shape[0] == 3  # moved up to fit


def test_clips_run_both_ways_unless_forward():
    method = make(None, clip_length=3)
    vol, label = _clip_volume()
    from ssbench.methods.api import Batch

    method.labeled = {"v": vol}
    batch = Batch(torch.zeros(1, 1, S, S), torch.zeros(1, S, S, dtype=torch.long), ["v"], [2])
    orders = set()
    for seed in range(12):
        torch.manual_seed(seed)
        holds = (method._labeled_clips(batch).labels[0] == 1).any(dim=(1, 2)).tolist()
        orders.add(tuple(holds))  # up from 2: slices 2, 3, 4 -> T T F; down: 2, 1, 0 -> T F F
    assert orders == {(True, True, False), (True, False, False)}
    forward = make(coarse_map(REGIONS), clip_length=3, clip_directions="forward")
    forward.labeled = {"v": vol}
    for seed in range(6):
        torch.manual_seed(seed)
        assert (forward._labeled_clips(batch).labels[0] == 1).any(dim=(1, 2)).tolist() == [True, True, False]


def _clip_batch(length: int, n: int = 1):
    """n clips of ``length`` slices: class 1 on every slice, class 2 absent from the first slice and present on the
    others, class 3 nowhere."""
    from ssbench.methods.sss.clips import ClipBatch

    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(n, length, S, S, dtype=torch.long)
    labels[:, :, 10:30, 10:30] = 1
    labels[:, 1:, 36:56, 30:50] = 2
    boxes = torch.tensor([[[10.0, 10, 29, 29], [30, 30, 50, 50], [5, 40, 20, 60]]] * n)
    present = torch.tensor([[True, False, False]] * n)
    return ClipBatch(torch.rand(n, length, 1, S, S, generator=g), labels, boxes, boxes[..., :2], present)


def test_clip_losses_train_memory_and_object_score():
    """One clip step: a prompted first slice, then memory; every class decoded; the memory modules and the
    object-score head get gradients."""
    from ssbench.methods.sss.clips import clip_losses

    method = make(None)
    method.train()
    batch = _clip_batch(2, n=2)
    sam = method.student.sam
    spy = DecoderSpy(sam, batch.images[0])
    losses = clip_losses(method.student, batch, with_point=False, absent_prompts=True)
    spy.close()
    assert len(spy.calls) == 2 and spy.calls[0][1] and not spy.calls[1][1]  # prompted first slice, then memory
    assert len(spy.calls[0][0]) == 6  # 2 clips x 3 classes, absent ones included (weighted 0 where untracked)
    sum(losses.values()).backward()
    for part in ("memory_attention", "memory_encoder", "sam_mask_decoder.pred_obj_score_head"):
        grads = [p.grad for n, p in sam.named_parameters() if n.startswith(part)]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part


def _losses(method, batch, absent_prompts: bool) -> dict:
    from ssbench.methods.sss.clips import clip_losses

    torch.manual_seed(0)  # the same dropout in memory attention
    out = clip_losses(method.student, batch, with_point=False, absent_prompts=absent_prompts)
    return {k: float(v.detach()) for k, v in out.items() if k != "loss_coarse"}  # the coarse head learns every class


@pytest.mark.parametrize("absent_prompts", [True, False])
def test_a_class_absent_from_the_prompted_slice_is_not_tracked(absent_prompts):
    """MedSAM-2 tracks only the prompted slice's objects. Class 2 (absent from slice 0, present on 1 and 2): what
    the later slices say about it changes no loss; its decoy box matters (the presence head learns "not here" under
    it) only with absent_prompts; without, it is not prompted at all."""
    method = make(None)
    method.train()
    batch = _clip_batch(3)
    base = _losses(method, batch, absent_prompts)
    gone = _clip_batch(3)
    gone.labels[gone.labels == 2] = 0  # class 2 nowhere on the later slices
    assert _losses(method, gone, absent_prompts) == base
    moved = _clip_batch(3)
    moved.boxes[0, 1] = torch.tensor([2.0, 2, 60, 60])  # another decoy box for class 2
    assert (_losses(method, moved, absent_prompts) == base) is (not absent_prompts)


def _slots_with_gradient(sam) -> set[int]:
    g = sam.maskmem_tpos_enc.grad
    return set() if g is None else {i for i in range(len(g)) if g[i].abs().sum() > 0}


@pytest.fixture(scope="module")
def trained_clip():
    """One labeled step on a clip of the default length (8 slices) and what evaluation reads on a 10-slice volume:
    (the model after the step's backward, the memory slots evaluation reads)."""
    from ssbench.methods.sss import sam2_net, sequence
    from ssbench.methods.sss.clips import clip_losses

    method = make(None)
    sam = method.student.sam
    with torch.no_grad():  # every object decoded "present": evaluation reads all of its memory
        sam.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(20.0)
    # evaluation: a 10-slice volume, one class prompted on the first slice (read forward), one on the last (read
    # backward); the memory slots it reads are those its outputs depend on
    x = torch.rand(10, 1, S, S, generator=torch.Generator().manual_seed(1))
    prompts = [sequence.ClassPrompt(0, (10.0, 10, 30, 30), (20.0, 20)), sequence.ClassPrompt(9, (20.0, 20, 40, 40),
                                                                                           (30.0, 30))]
    logits, scores = sequence.propagate(sam, sam2_net.encode(sam, x), prompts, with_point=False)
    (logits.clamp(-50, 50).sum() + scores.sum()).backward()
    read = _slots_with_gradient(sam)
    method.zero_grad(set_to_none=True)
    method.train()
    batch = _clip_batch(method.config.clip_length)  # the default length (8)
    sum(clip_losses(method.student, batch, with_point=False, absent_prompts=True).values()).backward()
    return method, read


def test_every_memory_slot_evaluation_reads_is_trained(trained_clip):
    """Evaluation reads the prompt's memory and the 6 propagated slices before the current one (both directions
    read the same slots): all 7 temporal slots. An 8-slice clip trains each of them (2-slice clips trained one)."""
    method, read = trained_clip
    sam = method.student.sam
    assert read == set(range(sam.num_maskmem))
    assert read <= _slots_with_gradient(sam)
    proj = [p.grad for p in sam.obj_ptr_tpos_proj.parameters()]  # the object pointers' temporal distances
    assert proj and all(g is not None and g.abs().sum() > 0 for g in proj)


def test_mask_choice_is_trained_as_sam2_trains_it(trained_clip):
    """Propagated slices are decoded as 3 candidate masks and the one with the highest predicted IoU is kept: the
    IoU head is trained (it had no gradient at all)."""
    method, _ = trained_clip
    sam = method.student.sam
    assert sam.multimask_output_for_tracking and sam._use_multimask(False, None)  # 3 candidates when propagating
    grads = [p.grad for p in sam.sam_mask_decoder.iou_prediction_head.parameters()]
    assert grads and all(g is not None for g in grads) and all(g.abs().sum() > 0 for g in grads)


def test_only_the_lowest_loss_candidate_is_back_propagated():
    from ssbench.methods.sss.losses import best_mask_losses, iou_losses

    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    logits = torch.full((2, 3, 8, 8), -4.0)
    logits[0, 1, 2:6, 2:6] = 4.0  # object 0: candidate 1 fits
    logits[1, 2, 2:6, 2:7] = 4.0  # object 1: candidate 2 nearly fits
    logits.requires_grad_(True)
    best_mask_losses(logits, target).sum().backward()
    touched = logits.grad.flatten(2).abs().sum(-1) > 0
    assert touched.tolist() == [[False, True, False], [False, False, True]]
    ious = torch.tensor([[0.5, 1.0, 0.0], [0.0, 0.0, 0.8]])
    actual = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 16 / 20]])  # each candidate's IoU with the target
    torch.testing.assert_close(iou_losses(logits.detach(), target, ious), (ious - actual).abs().mean(1))


def test_an_empty_class_is_prompted_with_the_whole_image_when_asked():
    """sss.empty_prompt = whole-image: class 3 (nowhere in the coarse map) is prompted on the middle slice with the
    whole-image box (the released code's prompt), so it can be predicted; absent (default) never prompts it."""
    method = make(coarse_map(REGIONS), empty_prompt="whole-image")
    x = volume()
    spy = DecoderSpy(method.student.sam, x)
    method.predict_volume(x)
    spy.close()
    prompted = [c for c in spy.calls if c[1]]
    assert len(prompted) == 1 and len(prompted[0][0]) == 3  # classes 1, 2 and 3 in one prompted call
    assert prompted[0][0][2] == D // 2  # class 3's row: the middle slice
    assert prompted[0][2][2, :2].tolist() == [[0.0, 0.0], [S - 1.0, S - 1.0]]  # its box: the whole image


def test_a_class_needs_the_minimum_coarse_area_to_be_present():
    """One stray coarse pixel of class 3 prompts it by the paper's rule (presence_min_voxels = 1); with a minimum
    of 2 voxels it stays absent. The probability the coarse foreground needs is pcsw_prob."""
    regions = {**REGIONS, 3: (range(5, 6), (slice(60, 61), slice(60, 61)))}
    for kw, classes in ((dict(), 3), (dict(presence_min_voxels=2), 2), (dict(pcsw_prob=0.99999999), 0)):
        method = make(coarse_map(regions), **kw)
        x = volume()
        spy = DecoderSpy(method.student.sam, x)
        method.predict_volume(x)
        spy.close()
        prompted = [c for c in spy.calls if c[1]]
        assert (len(prompted[0][0]) if prompted else 0) == classes, kw


def _sparse_volume():
    """BHSD-like: 20 slices, class 1 on slices 8-10, class 2 on slice 9 only, class 3 nowhere."""
    from ssbench.methods.sss.clips import LabeledVolume

    label = np.zeros((20, 64, 64), np.uint8)
    label[8:11, 10:20, 12:30] = 1
    label[9, 40:50, 30:44] = 2
    return LabeledVolume.of(np.random.default_rng(0).random((20, 64, 64)).astype(np.float32), label, 3)


@pytest.mark.slow
def test_sparse_clips_start_on_a_lesion_and_decode_only_present_objects():
    """A clip drawn on an empty slice starts on a slice holding a class instead (clip_start = holding); only the
    classes of its first slice are decoded through the clip, at most max_objects of them, the others on the first
    slice only (their decoy)."""
    from ssbench.methods.api import Batch

    method = make(None, clip_length=3)
    method.labeled = {"v": _sparse_volume()}
    batch = Batch(torch.zeros(1, 1, S, S), torch.zeros(1, S, S, dtype=torch.long), ["v"], [0])
    for seed in range(8):
        torch.manual_seed(seed)
        clip = method._labeled_clips(batch)
        assert clip.present[0].any()  # the first slice holds a class
        assert {c for _, c in clip.objects} <= {0, 1} and clip.objects
        assert sorted(clip.objects + clip.decoys) == [(0, 0), (0, 1), (0, 2)]
    rows = []
    hook = method.student.sam.sam_mask_decoder.register_forward_hook(lambda m, a, kw, out: rows.append(
        kw["image_embeddings"].shape[0]), with_kwargs=True)
    method.train()
    torch.manual_seed(0)
    clip = method._labeled_clips(batch)
    from ssbench.methods.sss.clips import clip_losses

    clip_losses(method.student, clip, with_point=False, absent_prompts=True)
    hook.remove()
    assert rows == [len(clip.objects)] * 3 + [len(clip.decoys)]  # tracked objects on 3 slices, decoys once
    from dataclasses import replace

    capped = method
    capped.config = replace(method.config, max_objects=1)
    torch.manual_seed(0)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        b = Batch(batch.image, batch.label, ["v"], [9])  # slice 9 holds classes 1 and 2
        clip = capped._labeled_clips(b)
        assert len(clip.objects) == 1 and clip.decoys == [(0, 2)]  # the class left out is not a decoy: it is there
        seen.add(clip.objects[0][1])
    assert seen == {0, 1}  # the kept object is drawn
    anywhere = method
    anywhere.config = replace(method.config, clip_start="any")
    assert not anywhere._labeled_clips(batch).objects  # slice 0 kept: nothing tracked


def test_training_box_frames_the_largest_component_with_sam2_noise():
    """train_box = component: on a slice where class 1 has two parts, the box frames the part of its largest 3-D
    component (PCSW's box frames one component at test time); box_noise moves each corner by at most 0.1 x side."""
    from ssbench.methods.sss.clips import LabeledVolume, box_noise, draw_clip

    label = np.zeros((4, 64, 64), np.uint8)
    label[0:4, 10:30, 10:30] = 1  # the big component: 4 slices
    label[0, 40:44, 40:50] = 1  # a small one on slice 0 only
    image = np.random.default_rng(0).random((4, 64, 64)).astype(np.float32)
    whole = LabeledVolume.of(image, label, 3)
    parts = LabeledVolume.of(image, label, 3, connectivity=6)
    box_all = draw_clip(whole, 0, 2, 64, "bilinear", (1.0, 1.0))[2][0]
    torch.manual_seed(0)
    box_main = draw_clip(parts, 0, 2, 64, "bilinear", (1.0, 1.0))[2][0]
    flipped = bool(box_main[0] > 32)  # the crop's flip (drawn with the seed)
    expected = [64 - 1 - 29.0, 10, 64 - 1 - 10.0, 29] if flipped else [10.0, 10, 29, 29]
    assert box_main.tolist() == expected
    assert (box_all[2] - box_all[0]) > 30  # every pixel of the class: both parts
    boxes = torch.tensor([[10.0, 10, 29, 29]]).expand(200, 4)
    moved = box_noise(boxes, 64, 0.1, 20.0)
    assert ((moved - boxes).abs() <= 1.9 + 1e-5).all() and (moved != boxes).any()
    assert torch.equal(box_noise(boxes, 64, 0.1, 0.5).sub(boxes).abs().amax() <= 0.5, torch.tensor(True))


def test_weak_crop_keeps_a_symmetric_label_symmetric():
    """Labels are cropped with nearest-exact, as they were resized: legacy nearest shifts them half a pixel (a
    symmetric label would come out asymmetric)."""
    from ssbench.methods.sss.geometry import Crop

    label = torch.zeros(1, 48, 48)
    label[:, :, 0] = 1
    label[:, :, 47] = 1
    out = Crop(0, 0, 48, 48, False).label(label, 64)[0]  # what draw_clip crops its labels with
    assert torch.equal(out, out.flip(-1)) and out.dtype == torch.long


def test_predict_volume_resizes_non_square_slices():
    """predict_volume checks both sides of the slices against the input size (it read only the width)."""
    method = make(coarse_map(REGIONS))
    x = torch.rand(D, 1, 48, S)  # the width is already the input size, the height is not
    assert method.predict_volume(x).shape == (D, 4, 48, S)
