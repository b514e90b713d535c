"""pipemon: a Prometheus exporter for media-processing pipelines."""
