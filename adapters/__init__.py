"""Framework adapters (installed as ``infoprobe.adapters``); each imports its framework lazily."""
