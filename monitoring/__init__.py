"""Monitoring: what tells people how their models do and what changed (issue 18), starting with the notifier that
sends events (registry changes, rollout steps, alerts) to webhooks."""
