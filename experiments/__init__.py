"""The DR3 study: one script per experiment (``python -m experiments.sarsa_vs_td|cql_vs_dr3|sensitivity``)."""
