"""legato-python: a ``python`` step type for Legato that runs a Python callable in a child process.

The step type lives in :mod:`legato_python.step`; :mod:`legato_python.plugin` is the (light) entry
point that registers it; :mod:`legato_python.child` is what runs in the child process (standard
library only, so any Python 3.8+ interpreter can run it); :mod:`legato_python.profile` is the
conformance profile and :mod:`legato_python.samples` the callables it uses.

Importing this package imports nothing else.
"""

__version__ = "0.1.0"
