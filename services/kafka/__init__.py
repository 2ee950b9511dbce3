"""Kafka plumbing shared by every service: admin, producer, local broker."""
