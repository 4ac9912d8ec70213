"""``legato serve``: the worker and a REST API in one process (DESIGN §8).

:mod:`.openapi` declares the operations and builds the OpenAPI document, :mod:`.app` holds the
routes, :mod:`.auth` the token, :mod:`.serve_cli` the command. Starlette and hypercorn are the
``serve`` extra: nothing here is imported by the rest of the kernel.
"""
