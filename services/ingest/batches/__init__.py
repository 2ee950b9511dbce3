"""Jobs and batches: their books on compacted topics, their states, the refresher."""
