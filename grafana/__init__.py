"""pipemon's Grafana dashboards as code (grafana/generate.py writes grafana/dashboards/)."""
