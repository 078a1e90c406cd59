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

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ssbench.errors import UserError

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


def build(model: str, image_size: int, device: torch.device):
    """A SAM2Base built by sam2 itself from its config, with random weights, at ``image_size``."""
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
    return build_sam2(MODELS[model][0], None, device=str(device), mode="train", hydra_overrides_extra=overrides,
                      apply_postprocessing=False)


def save_official(sam, path: str | Path) -> None:
    """Write a checkpoint in the official format: a dict whose key ``model`` holds the state dict."""
    torch.save({"model": sam.state_dict()}, path)


def load_official(sam, path: str | Path, model: str) -> None:
    """Load an official checkpoint strictly, with ``weights_only=True``; mismatches name the model and the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sss.checkpoint {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled code that weights_only refuses, ...
        raise UserError(f"sss.checkpoint {path}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"sss.checkpoint {path}: not an official SAM-2 checkpoint (no 'model' key)")
    try:
        missing, unexpected = sam.load_state_dict(state["model"], strict=False)
    except RuntimeError as exc:
        first = next((l.strip() for l in str(exc).splitlines() if "size mismatch" in l), str(exc).splitlines()[0])
        raise UserError(f"sss.checkpoint {path}: does not fit model {model}: {first}") from None
    if missing or unexpected:
        raise UserError(
            f"sss.checkpoint {path}: does not fit model {model}: {len(missing)} missing keys"
            f"{' (e.g. ' + missing[0] + ')' if missing else ''}, {len(unexpected)} unexpected"
            f"{' (e.g. ' + unexpected[0] + ')' if unexpected else ''}"
        )


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


def encode(sam, x: torch.Tensor) -> Features:
    """(B, 1, S, S) slices in [0, 1] -> their Features."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    out = sam.forward_image((x.expand(-1, 3, -1, -1) - mean) / std)
    return Features(list(out["backbone_fpn"][:3]), out["vision_pos_enc"][2])


def prompt_inputs(boxes: torch.Tensor, points: torch.Tensor | None = None) -> dict:
    """SAM-2's point inputs of B prompts: a box (B, 4) x0 y0 x1 y1 as two corner points labelled 2 and 3, and
    optionally a positive point (B, 2) x y, all in input pixels (what the video predictor's add_new_points_or_box
    hands to the model)."""
    n = boxes.shape[0]
    coords = boxes.reshape(n, 2, 2)
    labels = torch.tensor([[2, 3]], dtype=torch.int32, device=boxes.device).expand(n, 2)
    if points is not None:
        coords = torch.cat([coords, points.reshape(n, 1, 2)], 1)
        labels = torch.cat([labels, torch.ones(n, 1, dtype=torch.int32, device=boxes.device)], 1)
    return {"point_coords": coords, "point_labels": labels}


def new_memory() -> dict:
    """SAM-2's memory bank of one sequence: the outputs of its prompted and of its propagated frames."""
    return {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}


# what memory attention reads from a stored frame (the rest of a frame's output is not kept)
_MEMORY_KEYS = ("maskmem_features", "maskmem_pos_enc", "obj_ptr")


def track(sam, feats: Features, frame: int, memory: dict, num_frames: int, prompts: dict | None = None,
          reverse: bool = False, store: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of a sequence of B objects. With ``prompts`` it is a prompted (initial conditioning) frame, decoded
    without memory; without, memory attention conditions it on the stored frames. With ``store`` its memory is
    encoded and kept in ``memory`` under ``frame``.

    Returns mask logits (B, S, S) at the input size, NO_OBJECT where the object-score head says absent, and the
    object-score logits (B,)."""
    vision = [m.flatten(2).permute(2, 0, 1) for m in feats.maps]  # (HW, B, C) per level
    pos = [feats.pos.flatten(2).permute(2, 0, 1)]  # memory attention reads the S/16 level's only
    sizes = [tuple(m.shape[-2:]) for m in feats.maps]
    cond = prompts is not None
    out, heads, _, _ = sam._track_step(frame, cond, vision, pos, sizes, prompts, None, memory, num_frames, reverse,
                                       None)
    high_res, score = heads[4], heads[6]
    if store:
        sam._encode_memory_in_output(vision, sizes, prompts, True, high_res, score, out)
        out["obj_ptr"] = heads[5]
        key = "cond_frame_outputs" if cond else "non_cond_frame_outputs"
        memory[key][frame] = {k: out[k] for k in _MEMORY_KEYS}
    return high_res[:, 0], score[:, 0]
