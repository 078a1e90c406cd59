"""The network SSS trains: SAM-2 plus the coarse mask head that PCSW reads (the unit the EMA teacher copies)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssbench.methods.sss import sam2_net
from ssbench.methods.sss.sam2_net import Features


class CoarseHead(nn.Module):
    """Multi-class coarse masks from the 256-ch S/16 level and the 32-ch S/4 level (the released code's coarse
    head; its exact layers are not published: these are ours)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(256, 64, 3, padding=1), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(64 + 32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, num_classes, 1))

    def forward(self, feats: Features, size: int) -> torch.Tensor:
        """-> (B, K+1, size, size) logits."""
        s0, _, top = feats.maps
        x = F.interpolate(self.reduce(top), size=s0.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, s0], 1))
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _flat(f: Features) -> tuple[torch.Tensor, ...]:
    return (*f.maps, f.pos)


class SAM2Segmenter(nn.Module):
    def __init__(self, sam, num_classes: int, checkpointing: bool = False):
        super().__init__()
        self.sam = sam
        self.coarse = CoarseHead(num_classes)
        self.checkpointing = checkpointing

    @property
    def size(self) -> int:
        return self.sam.image_size

    def encode(self, x: torch.Tensor) -> Features:
        """A frozen image encoder runs without autograd (nothing of it kept for backward); with checkpointing a
        trained one keeps only its input and is recomputed in backward."""
        trained = any(p.requires_grad for p in self.sam.image_encoder.parameters())
        if self.checkpointing and trained and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            flat = checkpoint(lambda t: _flat(sam2_net.encode(self.sam, t)), x, use_reentrant=False)
            return Features(list(flat[:3]), flat[3])
        return sam2_net.encode(self.sam, x, encoder_grad=trained)

    def encode_chunks(self, x: torch.Tensor, batch: int) -> Features:
        """Encode a whole volume's slices a few at a time (bounded memory)."""
        parts = [self.encode(x[i : i + batch]) for i in range(0, len(x), batch)]
        return Features([torch.cat([p.maps[j] for p in parts]) for j in range(3)], torch.cat([p.pos for p in parts]))

    def coarse_probs(self, feats: Features) -> torch.Tensor:
        return self.coarse(feats, self.size).softmax(1)
