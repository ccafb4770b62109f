"""The daemon's kernel: supervisor, mailboxes, topics and the process entrypoint."""

VERSION = "0.1.0"
