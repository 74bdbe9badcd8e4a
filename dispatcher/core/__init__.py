"""The core: pure Python and pydantic. Task spec, job, retry, validation, registry, job
context, the execution core, the typed job record, events, settings, errors, ports."""
