"""Client dialects: the API shapes clients speak, each converted to and from the IR (``gateway.ir``)."""
