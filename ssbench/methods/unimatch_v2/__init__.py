"""UniMatch V2 ported to 2-D medical slices: DINOv2 (timm, official weights) + DPT. timm is imported only when the
network is built."""

from ssbench.methods.unimatch_v2.method import UniMatchV2

__all__ = ["UniMatchV2"]
