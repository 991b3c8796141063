class ConversionError(Exception):
    """A problem with the input checkpoint or the conversion request, with a message for the user."""
