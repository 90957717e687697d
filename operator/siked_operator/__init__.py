"""The DistillationRun operator: one Kubernetes Job per stage of the stage graph.

    siked-operator --all-namespaces --storage-uri s3://bucket/runs      (see main.py)

    phases.py     phases, condition types and reasons (mirrored in the CRD)
    crd.py        the CRD, generated from the spec model: python -m siked_operator.crd
    jobs.py       stage Job manifests and what a Job's status says (pure)
    status.py     what the run should look like now: status, Jobs to create/delete, events (pure)
    reconcile.py  one pass over one run: read the API and storage, decide, act
    kube.py       the few Kubernetes API calls the passes make
    handlers.py   the kopf handlers (thin)
    metrics.py    Prometheus metrics
    config.py     the operator's settings

The importable name is not `operator`: that is a module of Python's standard library.
"""
