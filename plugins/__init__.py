"""Legato's first-party plugins. Each module is an entry point in the ``legato`` group and is
loaded exactly like a third-party plugin; none of them is imported by the kernel."""
