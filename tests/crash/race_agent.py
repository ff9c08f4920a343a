"""An agent with a client-side tool: its runs pause until someone submits the output."""

from tether import Agent, ClientTool
from tether.adapters.models.scripted import ScriptedModel, call_tool, reply
from tether.domain.models import ModelRequest


def _model(request: ModelRequest):
    results = [m.text for m in request.messages if m.role == "tool"]
    return reply(f"the weather is {results[0]}") if results else call_tool("weather", {"city": "Oslo"})


agent = Agent("racer", ScriptedModel(_model), tools=[ClientTool("weather")], ref="race_agent:agent")
