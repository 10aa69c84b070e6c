"""Email replies and deliverability: reply addresses, inbound mail, address status."""
