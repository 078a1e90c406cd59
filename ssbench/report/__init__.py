"""``ssbench table``: tables, significance tests, figures and provenance regenerated from per-case result files."""
