"""digipat labels commands: semantic / instance / panoptic maps and panoptic quality (:mod:`pipeline.labels`)."""
