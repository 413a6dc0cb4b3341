"""Asset factories of the certification graph, one module per domain stage."""
