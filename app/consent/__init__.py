"""A patient's own word on being messaged: STOP, START, HELP, and providers' opt-outs."""
