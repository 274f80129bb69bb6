"""Protocol handlers of the fake provider (tests/fake_provider.py).

Each module defines ``register(app, ctx)``; ``build_app`` calls it with a
``ProtocolContext`` (recording, slow/failfirst/fail gate, error bodies, helpers).
The behaviour directives and token counting are documented in the docstring of
tests/fake_provider.py.
"""
