"""Example agents that ship with Tether. `tether demo` runs the florist one, offline."""
