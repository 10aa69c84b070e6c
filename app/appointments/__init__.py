"""Appointments: the reminders of each from its plan, and the visits that clear them."""
