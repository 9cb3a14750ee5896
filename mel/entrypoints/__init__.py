"""The edge of ``mel``: the command line and what its subcommands do.

This room wires the adapters together (``pipelines`` for Ray Data jobs, ``serve`` for the Serve app, Ray job
submission, KubeRay rendering, the demo, the install check). It is the only part of ``mel`` that may import
``serve`` or ``pipelines``; the core (config, domain model, steps, methods, runner, evaluator, index) never does,
and ``tests/unit/test_layering.py`` checks it by walking the imports.
"""
