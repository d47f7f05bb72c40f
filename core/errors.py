class LabError(ValueError):
    """A problem with the user's input or environment, with a message that says how to fix it.

    A message about one setting of a config says it in words (a page shows it as it is) and names the field in
    `setting`, with the `value` it is about: the command line adds that setting's flag (core.cli), so
    "Bit width 7 is not supported ..." reads there as "... (--q-bits 7)"."""

    def __init__(self, message: str = "", setting: str | None = None, value=None):
        super().__init__(message)
        self.setting, self.value = setting, value
