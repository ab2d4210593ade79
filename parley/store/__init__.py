"""The database behind the web UI: users, conversations, messages, votes, feedback."""
