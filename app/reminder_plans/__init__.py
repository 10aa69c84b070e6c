"""Reminder plans: which reminders an appointment gets, as offsets from its date."""
