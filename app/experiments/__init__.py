"""A/B experiments of reminder plans: enrolment, assignment, eviction and results."""
