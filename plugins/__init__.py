"""Built-in snn-suite plugins (installed as suite.plugins)."""
