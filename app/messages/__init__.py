"""Two-way messaging: what patients write to the service, and staff's answers."""
