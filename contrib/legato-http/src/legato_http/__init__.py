"""legato-http: an ``http`` step type for Legato.

The step type lives in :mod:`legato_http.plugin` (the ``legato`` entry point, which never imports
httpx), the request code in :mod:`legato_http.client` (imported when a step runs) and the
conformance profile in :mod:`legato_http.profile`. This module imports nothing.
"""

__version__ = "0.1.0"
