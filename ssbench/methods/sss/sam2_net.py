"""SAM-2 inside ssbench: building from the sam2 package's own configs, official checkpoints, encoding grayscale
slices and decoding box/point prompts. The only module of ssbench that imports ``sam2``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

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


def build(model: str, image_size: int, device: torch.device):
    """A SAM2Base built by sam2 itself from its config, with random weights, at ``image_size``."""
    from sam2.build_sam import build_sam2

    if model not in MODELS:
        raise UserError(f"sss.model {model}: unknown (known: {', '.join(MODELS)})")
    if image_size % 32:
        raise UserError(f"sss.image_size {image_size}: must be a multiple of 32")
    return build_sam2(MODELS[model][0], None, device=str(device), mode="train",
                      hydra_overrides_extra=[f"++model.image_size={image_size}"], apply_postprocessing=False)


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
    tmp = target.with_suffix(".part")
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


def encode(sam, x: torch.Tensor) -> list[torch.Tensor]:
    """(B, 1, S, S) in [0, 1] -> [32 ch @ S/4, 64 ch @ S/8, 256 ch @ S/16] as SAM-2's decoder reads them."""
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    out = sam.forward_image((x.expand(-1, 3, -1, -1) - mean) / std)
    s0, s1, emb = out["backbone_fpn"][:3]
    if sam.directly_add_no_mem_embed:  # as SAM2ImagePredictor does for single images
        emb = emb + sam.no_mem_embed.view(1, -1, 1, 1)
    return [s0, s1, emb]


def decode(sam, feats: list[torch.Tensor], image_index: torch.Tensor, boxes: torch.Tensor,
           points: torch.Tensor | None = None) -> torch.Tensor:
    """One mask per prompt. image_index (N,) picks the image of each prompt; boxes (N, 4) x0 y0 x1 y1 and
    points (N, 2) x y in input pixels. Returns (N, S, S) mask logits at the input size."""
    n = boxes.shape[0]
    coords = boxes.view(n, 2, 2)
    labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).expand(n, 2)
    if points is not None:
        coords = torch.cat([coords, points.view(n, 1, 2)], dim=1)
        labels = torch.cat([labels, torch.ones(n, 1, dtype=torch.int, device=boxes.device)], dim=1)
    sparse, dense = sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    low, _, _, _ = sam.sam_mask_decoder(
        image_embeddings=feats[2][image_index],
        image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=False,
        high_res_features=[feats[0][image_index], feats[1][image_index]],
    )
    size = sam.image_size
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
