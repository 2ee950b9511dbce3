"""Admission of batch lines, from an upload or a submissions topic, into requests."""
