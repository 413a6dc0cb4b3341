"""Quality assurance: playbooks, scenarios, oracles, gates, evidence, the MQS score and reports."""
