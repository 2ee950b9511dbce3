"""Model files kbatch makes itself (no model hub is reached at run time)."""
