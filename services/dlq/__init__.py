"""The DLQ tools: list, show and replay dead letters."""
