"""Dashboards and alert rules as code, so their queries stay in step with the metrics."""
