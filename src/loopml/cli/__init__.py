"""The `loopml` command line: parses, validates and prints; the work happens in the domain packages."""
