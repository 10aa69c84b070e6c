"""Webhooks to the clinic system: subscriptions, the event outbox, signed delivery."""
