"""The ``grail-cluster`` command line: ``main`` assembles the parser and runs a command; the commands
live in modules by job and share ``common`` (see ``main``'s docstring)."""
