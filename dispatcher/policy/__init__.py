"""Pure decisions, no I/O: routing, the adaptive rule, spill-over, the governor."""
