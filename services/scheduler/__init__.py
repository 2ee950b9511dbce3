"""The scheduler service: worker heartbeats, partition assignment, job progress."""
