"""Built-in snn-suite reports (installed as suite.reports)."""
