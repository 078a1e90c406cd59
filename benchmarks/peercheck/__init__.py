"""The peer check as a package: one module per official repository (``unimatch``, ``ssl4mis``, ``bcp``, ``abd``,
``admt``, ``unimatch_v2``), each with ``run(checkout, draws) -> list[Item]``; ``common`` holds what they share.
``benchmarks/peer_check.py`` is the command line."""
