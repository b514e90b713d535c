"""Queue presets: one module per queue library, plus the generic column mapping; the queue
source (`pipemon.sources.queue.PRESETS`) registers them."""
