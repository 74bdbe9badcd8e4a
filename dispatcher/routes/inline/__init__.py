"""The inline route: jobs run in this process after the response."""
