"""Built-in snn-suite baselines (installed as suite.baselines)."""
