"""Command-line interface of infoprobe (installed as ``infoprobe.cli``)."""
