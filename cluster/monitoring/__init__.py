"""What operators watch: the Prometheus that scrapes the cluster, the alert rules it loads
(``alerts``), and Grafana dashboards (``grafana/*.json``) for clusters that run Grafana."""
