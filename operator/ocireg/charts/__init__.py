"""Helm charts in OCI registries: find them, read their metadata, publish an index.

- versions: tags to SemVer, Helm constraints, newest-first selection
- metadata: recognising chart manifests, Chart.yaml from the config blob
- sync: the incremental registry walk with its tag -> digest memory
- index: the Helm index.yaml
- publish: the ConfigMap, status.charts, the ChartsSynced condition and Events
"""
