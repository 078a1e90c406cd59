"""Prompts from masks and the weak augmentation of SSS (crop, resize, flip), applied to images, labels and boxes
alike so that a prompt computed on the un-augmented slice still frames the same anatomy after augmentation (one
crop for all slices of a clip)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., H, W) bool -> (boxes (..., 4) float [x0, y0, x1, y1], non-empty (...) bool), without a host
    synchronisation (no nonzero); the box of an empty mask is meaningless and must be replaced (torch.where)."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)  # (..., H), (..., W)
    y0 = rows.int().argmax(-1)  # argmax returns the first maximum: the first row holding the mask
    y1 = h - 1 - rows.flip(-1).int().argmax(-1)
    x0 = cols.int().argmax(-1)
    x1 = w - 1 - cols.flip(-1).int().argmax(-1)
    return torch.stack([x0, y0, x1, y1], -1).float(), rows.any(-1)


def mask_box(mask: torch.Tensor) -> torch.Tensor | None:
    """(H, W) bool -> tensor [x0, y0, x1, y1] of its bounding box, or None when empty (reads the device)."""
    box, there = mask_boxes(mask)
    return box if bool(there) else None


def interior_points(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool -> (..., 2) [x, y]: the foreground pixel closest to the mask's centroid (a point prompt that
    lies on the object, also for a ring), the first in row-major order on ties; without a host synchronisation
    (meaningless for an empty mask)."""
    h, w = masks.shape[-2:]
    ys = torch.arange(h, device=masks.device, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, device=masks.device, dtype=torch.float32).view(1, w)
    m = masks.float()
    count = m.sum((-2, -1)).clamp_min(1)
    cy = (m * ys).sum((-2, -1)) / count
    cx = (m * xs).sum((-2, -1)) / count
    d2 = (ys - cy[..., None, None]) ** 2 + (xs - cx[..., None, None]) ** 2
    k = torch.where(masks, d2, torch.full_like(d2, float("inf"))).flatten(-2).argmin(-1)
    return torch.stack([k % w, torch.div(k, w, rounding_mode="floor")], -1).float()


def random_boxes(shape: tuple[int, ...], size: int, device=None, side=(0.1, 0.5)) -> torch.Tensor:
    """(*shape, 4) boxes of random position and sides in ``side`` x size, drawn on ``device`` (no host copy): the
    decoy prompt of a class absent from a slice and from its whole volume (ssbench's choice)."""
    u = torch.rand(*shape, 4, device=device)
    wh = torch.round(size * (side[0] + (side[1] - side[0]) * u[..., :2]))
    xy = torch.floor(u[..., 2:] * (size - wh + 1))
    return torch.cat([xy, xy + wh - 1], -1)


@dataclass(frozen=True)
class Crop:
    """Crop [y0, y0 + h) x [x0, x0 + w), resized back to the full size, then optionally flipped left-right."""

    y0: int
    x0: int
    h: int
    w: int
    flip: bool

    @classmethod
    def random(cls, size: int, scale=(0.7, 1.0), flip_p: float = 0.5, min_side: int = 8) -> "Crop":
        side = int(round(size * float(torch.empty(()).uniform_(*scale).sqrt())))
        side = max(min_side, min(side, size))
        y0 = int(torch.randint(0, size - side + 1, ()))
        x0 = int(torch.randint(0, size - side + 1, ()))
        return cls(y0, x0, side, side, bool(torch.rand(()) < flip_p))

    def image(self, x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
        """(C, H, W) -> (C, size, size)."""
        crop = x[:, self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        kwargs = {"align_corners": False} if mode == "bilinear" else {}  # labels: nearest-exact
        out = F.interpolate(crop[None].float(), size=(size, size), mode=mode, **kwargs)[0]
        return out.flip(-1) if self.flip else out

    def label(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """(C, H, W) integer maps -> (C, size, size) long, nearest-exact (pixel centres, as the labels were resized
        before: legacy nearest would move them half a pixel)."""
        return self.image(x.float(), size, mode="nearest-exact").round().long()

    def boxes(self, box: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Map (..., 4) boxes through the crop -> (moved boxes, inside (...) bool); a box outside the crop (what it
        framed is cropped away) is not inside. Device arithmetic only."""
        sx, sy = size / self.w, size / self.h
        x0, x1 = (box[..., 0] - self.x0) * sx, (box[..., 2] - self.x0) * sx
        y0, y1 = (box[..., 1] - self.y0) * sy, (box[..., 3] - self.y0) * sy
        inside = (x1 >= 0) & (y1 >= 0) & (x0 <= size - 1) & (y0 <= size - 1)
        out = torch.stack([x0, y0, x1, y1], -1).clamp(0, size - 1)
        if self.flip:
            out = torch.stack([size - 1 - out[..., 2], out[..., 1], size - 1 - out[..., 0], out[..., 3]], -1)
        return out, inside

    def box(self, box: torch.Tensor, size: int) -> torch.Tensor | None:
        """One box through the crop; None when it lies outside the crop (reads the device)."""
        out, inside = self.boxes(box, size)
        return out if bool(inside) else None

    def point(self, point: torch.Tensor, size: int) -> torch.Tensor:
        """(..., 2) [x, y] points through the crop."""
        x = ((point[..., 0] - self.x0) * size / self.w).clamp(0, size - 1)
        y = ((point[..., 1] - self.y0) * size / self.h).clamp(0, size - 1)
        return torch.stack([size - 1 - x if self.flip else x, y], -1)
