"""Ingest: validates batch lines and publishes them to the requests topic."""
