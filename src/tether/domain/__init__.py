"""Plain typed data: messages, agents, records, run state. No I/O lives here."""
