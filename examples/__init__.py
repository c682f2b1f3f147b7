"""Example models and apps: echo, digits, embeddings (and fleet.yaml serving them together)."""
