"""The `journey` command line: thin commands over the library functions."""
