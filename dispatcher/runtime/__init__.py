"""The composition root (``container``) and the user-facing objects built on it:
``@task``/``Task``, ``TaskHandle``, the worker app."""
