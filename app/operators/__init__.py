"""Dashboard operators: accounts, passwords, sessions and the login rate limit."""
