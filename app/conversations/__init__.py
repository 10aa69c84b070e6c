"""Conversations with patients: topics, the messages on them, and routing replies."""
