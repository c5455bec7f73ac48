"""The audit: the decision model run over the lumbar imaging orders of a FHIR Bulk Data export.

    export files (NDJSON, gzip) -> lines keyed by patient (export.py)
        -> grouped by patient out of core (local.py: on-disk partitions; spark.py: PySpark)
        -> per patient: the record as of each order's authoredOn (asof.py), the service's own
           Evaluator, one row per order (patient.py)
        -> Parquet, CSV, summary.json (output.py) and report.html (report.py)

``bulk.py`` kicks off ``$export`` on a FHIR server and downloads what it writes; ``command.py`` is
the ``lumbar-mri-cds audit`` command.
"""
