"""Development tools: the environment every `notify` command prepares, the process
supervisor and `notify dev`'s stack. A client of the app, which never imports it."""
