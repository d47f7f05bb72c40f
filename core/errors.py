class LabError(ValueError):
    """A problem with the user's input or environment, with a message that says how to fix it."""
