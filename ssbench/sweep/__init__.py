"""``ssbench sweep``: many runs (methods x splits x seeds x datasets) as one submitit job array.

``grid``    expand a grid (command-line lists or a grid file shipped with the package, e.g. ``--grid paper``)
            into run requests, and find which of them are already complete;
``launch``  submit the rest through submitit (local processes, Slurm job arrays, or in-process for debugging),
            each job a resumable run that submitit requeues on preemption or timeout;
``status``  done / running / failed / queued / missing, from the run folders and the sweep's manifest.
"""
