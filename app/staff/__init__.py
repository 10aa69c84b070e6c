"""Clinic staff users: who they are and the one address they are reached at (email)."""
