"""Inference workers: exactly-once consume-infer-produce over assigned partitions."""
