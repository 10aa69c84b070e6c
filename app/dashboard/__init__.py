"""The operators' dashboard: server-rendered pages under /dashboard, every asset served
by the service itself (no CDN), opened by an operator's session, never by an API key."""
