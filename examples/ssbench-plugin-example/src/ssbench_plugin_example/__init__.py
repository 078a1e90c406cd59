"""An ssbench plugin package: a method (``entropy-min``) and a dataset loader (``pairs``)."""
