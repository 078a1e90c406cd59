"""SSS: Semi-Supervised SAM-2 with DFE and PCSW. ``sam2`` is imported only when a model is built."""

from ssbench.methods.sss.method import SSS

__all__ = ["SSS"]
