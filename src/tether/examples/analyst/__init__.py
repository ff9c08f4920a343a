"""An offline example of the `python` tool and an MCP server: how long until the new year?"""

from pathlib import Path

HERE = Path(__file__).parent
AGENT_FILE = HERE / "agent.toml"
TASK = "How many days are left until the next new year, in UTC? Show your working."
