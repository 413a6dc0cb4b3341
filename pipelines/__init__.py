"""Dagster pipelines of apr: the certification asset graph, partitioned by model playbook."""
