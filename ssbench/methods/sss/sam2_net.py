"""SAM-2 inside ssbench: built by the ``sam2`` package from its own configs, official checkpoints, encoding grayscale
slices, and one frame of SAM-2's tracking (prompted or carried by memory). The only module family of ssbench that
imports ``sam2``.

``track`` runs what ``SAM2Base.track_step`` runs (``_track_step``: memory attention, prompt encoder, mask decoder,
object pointer; then ``_encode_memory_in_output``: memory encoder) and also returns the object-score logits, which
``SAM2Base.track_step`` drops in training mode. The package's ``training.model.sam2.SAM2Train`` keeps them the same
way, but it cannot be imported without ``tensordict`` (not a dependency of ``sam2``), and its ``forward`` samples
correction clicks from the ground truth with its own unseeded generator, which is not the recipe here.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssbench.errors import UserError
from ssbench.methods.blocks.pretrained import load_strict, read_checkpoint

# name -> (config inside the sam2 package, official checkpoint file, release folder)
MODELS = {
    "sam2_hiera_t": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt", "072824"),
    "sam2_hiera_s": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt", "072824"),
    "sam2_hiera_b+": ("configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt", "072824"),
    "sam2_hiera_l": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt", "072824"),
    "sam2.1_hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", "092824"),
    "sam2.1_hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", "092824"),
    "sam2.1_hiera_b+": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", "092824"),
    "sam2.1_hiera_l": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", "092824"),
}
DOWNLOAD = "https://dl.fbaipublicfiles.com/segment_anything_2/{release}/{file}"
# SAM-2's input normalisation (ImageNet statistics); grayscale slices are repeated to three channels first.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NO_OBJECT = -1024.0  # sam2's NO_OBJ_SCORE: the mask logit of a frame where the object-score head says absent


def build(model: str, image_size: int, device: torch.device, multimask_tracking: bool = True,
          postprocess: bool = False):
    """A SAM2Base built by sam2 itself from its config, with random weights, at ``image_size``.

    ``multimask_tracking``: the configs' setting (3 masks on every propagated frame, the one with the highest
    predicted IoU kept); false decodes one mask there. ``postprocess``: the video predictor's mask decoder setting
    (build_sam2_video_predictor with apply_postprocessing): in eval, a single-mask output whose stability score is
    below 0.98 falls back to the best of the 3 masks. The predictor's other post-processing, hole filling, is
    ``fill_holes`` below."""
    from sam2.build_sam import build_sam2

    if model not in MODELS:
        raise UserError(f"sss.model {model}: unknown (known: {', '.join(MODELS)})")
    if image_size % 32:
        raise UserError(f"data.train_size {image_size}: SSS needs a multiple of 32 (SAM-2's image encoder)")
    tokens = image_size // 16
    attention = "++model.memory_attention.layer.{}.feat_sizes=[{},{}]"
    overrides = [
        f"++model.image_size={image_size}",
        # rotary encodings of memory attention sized for this input (the config's 64x64 is for 1024)
        attention.format("self_attention", tokens, tokens),
        attention.format("cross_attention", tokens, tokens),
        # as SAM-2's video predictor builds it (build_sam2_video_predictor): in eval, the memory of a prompted
        # frame encodes its binarised mask
        "++model.binarize_mask_from_pts_for_mem_enc=true",
    ]
    if not multimask_tracking:
        overrides.append("++model.multimask_output_for_tracking=false")
    # apply_postprocessing=True would also add the stability fallback; it is asked for explicitly (recorded option)
    return build_sam2(MODELS[model][0], None, device=str(device), mode="train", hydra_overrides_extra=overrides,
                      apply_postprocessing=postprocess)


def move_rope_tables(sam, device: torch.device) -> None:
    """SAM-2's memory attention keeps its rotary tables (``freqs_cis``) outside the module state and copies them to
    the input's device on first use; moved with the model instead, no step copies them."""
    for module in sam.modules():
        table = getattr(module, "freqs_cis", None)
        if isinstance(table, torch.Tensor):
            module.freqs_cis = table.to(device)


def save_official(sam, path: str | Path) -> None:
    """Write a checkpoint in the official format: a dict whose key ``model`` holds the state dict."""
    torch.save({"model": sam.state_dict()}, path)


def load_official(sam, path: str | Path, model: str) -> None:
    """Load an official checkpoint strictly, with ``weights_only=True``; mismatches name the model and the file."""
    state = read_checkpoint(path, "sss.checkpoint")
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"sss.checkpoint {path}: not an official SAM-2 checkpoint (no 'model' key)")
    load_strict(sam, state["model"], f"sss.checkpoint {path}: does not fit model {model}")


def fetch_official(model: str, cache: Path) -> Path:
    """The official checkpoint of ``model`` from the cache folder, downloaded there with a progress bar if absent."""
    _, file, release = MODELS[model]
    target = cache / file
    if target.is_file():
        return target
    url = DOWNLOAD.format(release=release, file=file)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")  # per process: concurrent jobs never share one
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"sss: cannot download {url} ({type(exc).__name__}); put {file} at {target} "
            "or pass --set sss.checkpoint=PATH"
        ) from None
    tmp.replace(target)
    return target


@dataclass
class Features:
    """Image-encoder output of B images: [32 ch @ S/4, 64 ch @ S/8, 256 ch @ S/16] (the decoder's high-resolution
    levels already projected, as SAM2Base.forward_image does) and the position encoding of the S/16 level."""

    maps: list[torch.Tensor]
    pos: torch.Tensor  # (B, 256, S/16, S/16)

    def __len__(self) -> int:
        return self.maps[0].shape[0]

    def rows(self, start: int, stop: int) -> "Features":
        return Features([m[start:stop] for m in self.maps], self.pos[start:stop])

    def take(self, index: torch.Tensor) -> "Features":
        """Rows ``index``. Use unique indices where gradients flow: repeated rows are made by ``repeat``."""
        return Features([m[index] for m in self.maps], self.pos[index])

    def repeat(self, k: int) -> "Features":
        """Each image k times in a row (one row per object); its backward is a plain sum, deterministic on CPU."""
        return Features([m.repeat_interleave(k, 0) for m in self.maps], self.pos.repeat_interleave(k, 0))

    def with_maps(self, maps: list[torch.Tensor]) -> "Features":
        return Features(maps, self.pos)


@functools.cache
def _normalisation(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-2's mean and std as (1, 3, 1, 1) tensors, built once per device and dtype (not on every encode: each
    build is a host-to-device copy)."""
    made = lambda values: torch.stack([torch.full((), v, dtype=dtype, device=device) for v in values])  # noqa: E731
    return made(MEAN).view(1, 3, 1, 1), made(STD).view(1, 3, 1, 1)  # filled on the device: no host data copied


def encode(sam, x: torch.Tensor, encoder_grad: bool = True) -> Features:
    """(B, 1, S, S) slices in [0, 1] -> their Features: what ``SAM2Base.forward_image`` computes (the image encoder,
    then the mask decoder's projections of the two high-resolution levels). ``encoder_grad = False``: the image
    encoder runs without autograd (frozen: none of its activations kept), the projections, which train with the
    mask decoder, with it."""
    mean, std = _normalisation(x.device, x.dtype)
    with torch.set_grad_enabled(torch.is_grad_enabled() and encoder_grad):
        out = sam.image_encoder((x.expand(-1, 3, -1, -1) - mean) / std)
    fpn = list(out["backbone_fpn"])
    if sam.use_high_res_features_in_sam:
        fpn[0], fpn[1] = sam.sam_mask_decoder.conv_s0(fpn[0]), sam.sam_mask_decoder.conv_s1(fpn[1])
    return Features(fpn[:3], out["vision_pos_enc"][2])


# the memory modules as MedSAM-2 groups them (train_3d.py: obj_ptr_proj, memory_encoder, memory_attention,
# mask_downsample) and SAM-2's parameters that only memory reads
_MEMORY = ("obj_ptr_proj.", "memory_encoder.", "memory_attention.", "mask_downsample.", "maskmem_tpos_enc",
           "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "obj_ptr_tpos_proj.")


def module_group(name: str) -> str:
    """A SAM2Segmenter parameter name -> its learning-rate group: memory, decoder (the mask decoder) or rest."""
    inner = name.removeprefix("sam.")
    if inner != name and inner.startswith(_MEMORY):
        return "memory"
    return "decoder" if name.startswith("sam.sam_mask_decoder.") else "rest"


def prompt_inputs(boxes: torch.Tensor, points: torch.Tensor | None = None) -> dict:
    """SAM-2's point inputs of B prompts: a box (B, 4) x0 y0 x1 y1 as two corner points labelled 2 and 3, and
    optionally a positive point (B, 2) x y, all in input pixels (what the video predictor's add_new_points_or_box
    hands to the model)."""
    n = boxes.shape[0]
    coords = boxes.reshape(n, 2, 2)
    # labels 2, 3 made on the device (torch.tensor([[2, 3]], device=...) would be a host-to-device copy)
    labels = torch.arange(2, 4, dtype=torch.int32, device=boxes.device).expand(n, 2)
    if points is not None:
        coords = torch.cat([coords, points.reshape(n, 1, 2)], 1)
        labels = torch.cat([labels, torch.ones(n, 1, dtype=torch.int32, device=boxes.device)], 1)
    return {"point_coords": coords, "point_labels": labels}


def new_memory() -> dict:
    """SAM-2's memory bank of one sequence: the outputs of its prompted and of its propagated frames."""
    return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}


# what memory attention reads from a stored frame (the rest of a frame's output is not kept)
_MEMORY_KEYS = ("maskmem_features", "maskmem_pos_enc", "obj_ptr")


@dataclass
class Frame:
    """One decoded frame of B objects.

    ``mask``: (B, S, S) logits at the input size of the mask SAM-2 keeps (with several candidates, the one with the
    highest predicted IoU), NO_OBJECT where the object-score head says absent; ``score``: (B,) object-score
    logits; ``masks`` (B, M, S, S) and ``ious`` (B, M): every candidate and its predicted IoU (M = 3 on a
    propagated frame with multimask tracking, else 1): what SAM-2's training loss reads."""

    mask: torch.Tensor
    score: torch.Tensor
    masks: torch.Tensor
    ious: torch.Tensor


def track(sam, feats: Features, frame: int, memory: dict, num_frames: int, prompts: dict | None = None,
          reverse: bool = False, store: bool = True, fill_hole_area: int = 0,
          mask_inputs: torch.Tensor | None = None) -> Frame:
    """One frame of a sequence of B objects. With ``prompts`` it is a prompted (initial conditioning) frame, decoded
    without memory; without, memory attention conditions it on the stored frames. With ``store`` its memory is
    encoded and kept in ``memory`` under ``frame``. ``fill_hole_area`` > 0 (evaluation only, the video
    predictor's post-processing): holes up to that area in the kept low-resolution mask are filled in the returned
    mask, after its memory was encoded (as SAM2VideoPredictor._run_single_frame_inference does). ``mask_inputs``
    (B, 1, S, S): a mask prompt instead (the video predictor's add_new_mask; SAM-2 uses it as the frame's output)."""
    vision = [m.flatten(2).permute(2, 0, 1) for m in feats.maps]  # (HW, B, C) per level
    pos = [feats.pos.flatten(2).permute(2, 0, 1)]  # memory attention reads the S/16 level's only
    sizes = [tuple(m.shape[-2:]) for m in feats.maps]
    cond = prompts is not None or mask_inputs is not None
    out, heads, _, _ = sam._track_step(frame, cond, vision, pos, sizes, prompts, mask_inputs, memory, num_frames,
                                       reverse, None)
    _, multimasks, ious, low_res, high_res, obj_ptr, score = heads
    if store:
        sam._encode_memory_in_output(vision, sizes, prompts, True, high_res, score, out)
        out["obj_ptr"] = obj_ptr
        key = "cond_frame_outputs" if cond else "non_cond_frame_outputs"
        memory[key][frame] = {k: out[k] for k in _MEMORY_KEYS}
    if fill_hole_area > 0:
        high_res = torch.nn.functional.interpolate(fill_holes(low_res, fill_hole_area), size=high_res.shape[-2:],
                                                   mode="bilinear", align_corners=False)
    return Frame(high_res[:, 0], score[:, 0], multimasks, ious)


def fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """(B, 1, h, w) mask logits with every hole (a background component, logit <= 0, 8-connected as SAM-2's CUDA
    kernel labels them) of area <= ``max_area`` set to 0.1, as sam2.utils.misc.fill_holes_in_mask_scores does.
    SAM-2's kernel is an optional compiled extension (skipped with a warning when absent); this is SciPy on the
    host: evaluation only."""
    from scipy import ndimage

    background = (logits <= 0).cpu().numpy()
    hole = np.zeros_like(background)
    eight = np.ones((3, 3), bool)
    for i in range(background.shape[0]):
        labels, _ = ndimage.label(background[i, 0], structure=eight)
        areas = np.bincount(labels.ravel())
        small = (areas <= max_area) & (np.arange(len(areas)) > 0)
        hole[i, 0] = small[labels]
    return torch.where(torch.from_numpy(hole).to(logits.device), torch.full_like(logits, 0.1), logits)


_HASHES: dict[tuple, str] = {}


def checkpoint_sha256(path: str | Path) -> str:
    """The SHA-256 of a checkpoint file (hex), computed once per file version in a process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]
