"""Prompts from masks and the weak augmentation of SSS (crop, resize, flip), applied to images, labels and boxes
alike so that a prompt computed on the un-augmented slice still frames the same anatomy after augmentation (one
crop for all slices of a clip)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def mask_box(mask: torch.Tensor) -> torch.Tensor | None:
    """(H, W) bool -> tensor [x0, y0, x1, y1] of its bounding box, or None when empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return None
    return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()


def interior_point(mask: torch.Tensor) -> torch.Tensor:
    """The foreground pixel closest to the mask's centroid, as [x, y] (a point prompt that lies on the object)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    cy, cx = ys.float().mean(), xs.float().mean()
    k = torch.argmin((ys.float() - cy) ** 2 + (xs.float() - cx) ** 2)
    return torch.stack([xs[k], ys[k]]).float()


def whole_image_box(size: int, device=None) -> torch.Tensor:
    return torch.tensor([0.0, 0.0, size - 1.0, size - 1.0], device=device)


def random_box(size: int, side=(0.1, 0.5)) -> torch.Tensor:
    """A box of random position and sides in ``side`` x size: the decoy prompt of a class absent from a slice and
    from its whole volume (ssbench's choice)."""
    w, h = (int(round(size * float(torch.empty(()).uniform_(*side)))) for _ in range(2))
    x0 = int(torch.randint(0, size - w + 1, ()))
    y0 = int(torch.randint(0, size - h + 1, ()))
    return torch.tensor([x0, y0, x0 + w - 1, y0 + h - 1], dtype=torch.float32)


@dataclass(frozen=True)
class Crop:
    """Crop [y0, y0 + h) x [x0, x0 + w), resized back to the full size, then optionally flipped left-right."""

    y0: int
    x0: int
    h: int
    w: int
    flip: bool

    @classmethod
    def random(cls, size: int, scale=(0.7, 1.0), flip_p: float = 0.5) -> "Crop":
        side = int(round(size * float(torch.empty(()).uniform_(*scale).sqrt())))
        side = max(8, min(side, size))
        y0 = int(torch.randint(0, size - side + 1, ()))
        x0 = int(torch.randint(0, size - side + 1, ()))
        return cls(y0, x0, side, side, bool(torch.rand(()) < flip_p))

    def image(self, x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
        """(C, H, W) -> (C, size, size)."""
        crop = x[:, self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        out = F.interpolate(crop[None].float(), size=(size, size), mode=mode, **kwargs)[0]
        return out.flip(-1) if self.flip else out

    def box(self, box: torch.Tensor, size: int) -> torch.Tensor | None:
        """Map a box through the crop; None when it lies outside the crop (what it framed is cropped away)."""
        sx, sy = size / self.w, size / self.h
        x0, y0, x1, y1 = (box[0] - self.x0) * sx, (box[1] - self.y0) * sy, (box[2] - self.x0) * sx, (box[3] - self.y0) * sy
        if x1 < 0 or y1 < 0 or x0 > size - 1 or y0 > size - 1:
            return None
        out = torch.stack([x0, y0, x1, y1]).clamp(0, size - 1)
        if self.flip:
            out = torch.stack([size - 1 - out[2], out[1], size - 1 - out[0], out[3]])
        return out

    def point(self, point: torch.Tensor, size: int) -> torch.Tensor:
        x = ((point[0] - self.x0) * size / self.w).clamp(0, size - 1)
        y = ((point[1] - self.y0) * size / self.h).clamp(0, size - 1)
        return torch.stack([size - 1 - x if self.flip else x, y])
