"""The Assistants API's behaviour as services: the agent an API run runs (`agents`), its stored
documents typed (`documents`), threads' messages and runs paged in SQL (`thread_messages`,
`thread_runs`), and the service every face calls (`service`)."""
