"""Segmentation methods. Each module holds one method: its config dataclass (with the published defaults), its
networks and its training step. See ``ssbench.methods.api`` for the contract and ``ssbench.registry`` for how
methods are found (the ``ssbench.methods`` entry-point group, the same path plugins use)."""
